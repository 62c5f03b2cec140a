//! One `MilvusService` call as a value: each request type knows its
//! method, its name (for errors) and its response, so that
//! [`MilvusClient::call`](super::MilvusClient::call) and
//! [`MilvusClient::send`](super::MilvusClient::send) can do the part every
//! call shares (send on the connection, map a gRPC failure, take the body,
//! check its Milvus status) and a call site states only its request.

use std::future::Future;

use tonic::{Response, Status};

use super::ServiceClient;
use crate::proto::{common, milvus as pb};

/// A response body that carries a Milvus status.
pub trait WithStatus {
    /// The Milvus status of the answer (None when the body has none).
    fn milvus_status(&self) -> Option<&common::Status>;
}

impl WithStatus for common::Status {
    fn milvus_status(&self) -> Option<&common::Status> {
        Some(self)
    }
}

/// A request of one `MilvusService` method.
pub trait MilvusCall: Send + 'static {
    /// The method's response body.
    type Response: WithStatus + Send + 'static;
    /// The method's name, as errors show it (`CreateCollection`).
    const NAME: &'static str;
    /// Sends the request on `client` (its timeouts and deadline apply).
    fn send(
        self,
        client: ServiceClient,
    ) -> impl Future<Output = Result<Response<Self::Response>, Status>> + Send;
}

/// `WithStatus` for response bodies with a `status` field.
macro_rules! with_status {
    ($($response:ident),* $(,)?) => {$(
        impl WithStatus for pb::$response {
            fn milvus_status(&self) -> Option<&common::Status> {
                self.status.as_ref()
            }
        }
    )*};
}

with_status!(
    BoolResponse,
    DescribeCollectionResponse,
    DescribeIndexResponse,
    FlushResponse,
    GetFlushStateResponse,
    GetLoadStateResponse,
    GetVersionResponse,
    ListDatabasesResponse,
    MutationResult,
    QueryResults,
    ShowCollectionsResponse,
    ShowPartitionsResponse,
);

/// `MilvusCall` for the calls the agent makes: `Name: method(Request) -> Response`.
macro_rules! milvus_calls {
    ($($name:ident: $method:ident($request:ident) -> $response:ty;)*) => {$(
        impl MilvusCall for pb::$request {
            type Response = $response;
            const NAME: &'static str = stringify!($name);
            fn send(
                self,
                mut client: ServiceClient,
            ) -> impl Future<Output = Result<Response<Self::Response>, Status>> + Send {
                async move { client.$method(self).await }
            }
        }
    )*};
}

milvus_calls! {
    AlterAlias: alter_alias(AlterAliasRequest) -> common::Status;
    AlterCollection: alter_collection(AlterCollectionRequest) -> common::Status;
    CreateAlias: create_alias(CreateAliasRequest) -> common::Status;
    CreateCollection: create_collection(CreateCollectionRequest) -> common::Status;
    CreateDatabase: create_database(CreateDatabaseRequest) -> common::Status;
    CreateIndex: create_index(CreateIndexRequest) -> common::Status;
    CreatePartition: create_partition(CreatePartitionRequest) -> common::Status;
    Delete: delete(DeleteRequest) -> pb::MutationResult;
    DescribeCollection: describe_collection(DescribeCollectionRequest) -> pb::DescribeCollectionResponse;
    DescribeIndex: describe_index(DescribeIndexRequest) -> pb::DescribeIndexResponse;
    DropAlias: drop_alias(DropAliasRequest) -> common::Status;
    DropCollection: drop_collection(DropCollectionRequest) -> common::Status;
    DropDatabase: drop_database(DropDatabaseRequest) -> common::Status;
    DropIndex: drop_index(DropIndexRequest) -> common::Status;
    DropPartition: drop_partition(DropPartitionRequest) -> common::Status;
    Flush: flush(FlushRequest) -> pb::FlushResponse;
    GetFlushState: get_flush_state(GetFlushStateRequest) -> pb::GetFlushStateResponse;
    GetLoadState: get_load_state(GetLoadStateRequest) -> pb::GetLoadStateResponse;
    GetVersion: get_version(GetVersionRequest) -> pb::GetVersionResponse;
    HasCollection: has_collection(HasCollectionRequest) -> pb::BoolResponse;
    ListDatabases: list_databases(ListDatabasesRequest) -> pb::ListDatabasesResponse;
    LoadCollection: load_collection(LoadCollectionRequest) -> common::Status;
    LoadPartitions: load_partitions(LoadPartitionsRequest) -> common::Status;
    Query: query(QueryRequest) -> pb::QueryResults;
    ReleaseCollection: release_collection(ReleaseCollectionRequest) -> common::Status;
    ReleasePartitions: release_partitions(ReleasePartitionsRequest) -> common::Status;
    RenameCollection: rename_collection(RenameCollectionRequest) -> common::Status;
    ShowCollections: show_collections(ShowCollectionsRequest) -> pb::ShowCollectionsResponse;
    ShowPartitions: show_partitions(ShowPartitionsRequest) -> pb::ShowPartitionsResponse;
    Upsert: upsert(UpsertRequest) -> pb::MutationResult;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_named_as_milvus_names_them() {
        assert_eq!(pb::CreateCollectionRequest::NAME, "CreateCollection");
        assert_eq!(pb::GetFlushStateRequest::NAME, "GetFlushState");
        let failed = common::Status {
            code: 100,
            ..Default::default()
        };
        assert_eq!(failed.milvus_status().map(|s| s.code), Some(100));
        let answer = pb::MutationResult {
            status: Some(failed.clone()),
            ..Default::default()
        };
        assert_eq!(answer.milvus_status(), Some(&failed));
    }
}
