//! Batching of consecutive inserts into one collection partition: columns of
//! several source insert messages are concatenated into one upsert, bounded by
//! rows and bytes.

use crate::proto::{
    msg::InsertRequest,
    schema::{
        field_data::Field, scalar_field::Data as Scalar, vector_field::Data as Vector, FieldData,
        ScalarField, VectorField,
    },
};

/// Rows of consecutive inserts with the same destination.
#[derive(Debug, Default)]
pub struct InsertBatch {
    /// Source collection id.
    pub collection_id: i64,
    /// Database name.
    pub db: String,
    /// Collection name.
    pub collection: String,
    /// Partition name.
    pub partition: String,
    /// The source partition's id (a partition dropped and re-created under
    /// its name gets a new one).
    pub partition_id: i64,
    /// Concatenated columns.
    pub columns: Vec<FieldData>,
    /// Rows in the batch.
    pub rows: u64,
    /// Approximate payload bytes.
    pub bytes: usize,
    /// Source messages merged.
    pub messages: u64,
}

impl InsertBatch {
    /// A batch holding `msg`.
    pub fn new(msg: InsertRequest, bytes: usize) -> Self {
        Self {
            collection_id: msg.collection_id,
            db: msg.db_name,
            collection: msg.collection_name,
            partition: msg.partition_name,
            partition_id: msg.partition_id,
            columns: msg.fields_data,
            rows: msg.num_rows,
            bytes,
            messages: 1,
        }
    }

    /// Whether `msg` goes to the same place with the same columns.
    pub fn accepts(&self, msg: &InsertRequest) -> bool {
        msg.collection_id == self.collection_id
            && msg.partition_name == self.partition
            && msg.partition_id == self.partition_id
            && msg.fields_data.len() == self.columns.len()
            && msg
                .fields_data
                .iter()
                .zip(&self.columns)
                .all(|(a, b)| a.field_name == b.field_name && same_kind(a, b))
    }

    /// Appends `msg` (call only if [`accepts`](Self::accepts) said yes).
    pub fn push(&mut self, msg: InsertRequest, bytes: usize) {
        for (dst, src) in self.columns.iter_mut().zip(msg.fields_data) {
            append(dst, src);
        }
        self.rows += msg.num_rows;
        self.bytes += bytes;
        self.messages += 1;
    }
}

fn same_kind(a: &FieldData, b: &FieldData) -> bool {
    match (&a.field, &b.field) {
        (Some(Field::Scalars(x)), Some(Field::Scalars(y))) => {
            std::mem::discriminant(&x.data) == std::mem::discriminant(&y.data)
        }
        (Some(Field::Vectors(x)), Some(Field::Vectors(y))) => {
            x.dim == y.dim && std::mem::discriminant(&x.data) == std::mem::discriminant(&y.data)
        }
        (None, None) => true,
        _ => false,
    }
}

/// Concatenates the values of `src` to `dst` (same column kind).
fn append(dst: &mut FieldData, src: FieldData) {
    match (&mut dst.field, src.field) {
        (Some(Field::Scalars(d)), Some(Field::Scalars(s))) => append_scalars(d, s),
        (Some(Field::Vectors(d)), Some(Field::Vectors(s))) => append_vectors(d, s),
        _ => {}
    }
}

fn append_scalars(d: &mut ScalarField, s: ScalarField) {
    match (&mut d.data, s.data) {
        (Some(Scalar::BoolData(a)), Some(Scalar::BoolData(b))) => a.data.extend(b.data),
        (Some(Scalar::IntData(a)), Some(Scalar::IntData(b))) => a.data.extend(b.data),
        (Some(Scalar::LongData(a)), Some(Scalar::LongData(b))) => a.data.extend(b.data),
        (Some(Scalar::FloatData(a)), Some(Scalar::FloatData(b))) => a.data.extend(b.data),
        (Some(Scalar::DoubleData(a)), Some(Scalar::DoubleData(b))) => a.data.extend(b.data),
        (Some(Scalar::StringData(a)), Some(Scalar::StringData(b))) => a.data.extend(b.data),
        (Some(Scalar::BytesData(a)), Some(Scalar::BytesData(b))) => a.data.extend(b.data),
        (Some(Scalar::ArrayData(a)), Some(Scalar::ArrayData(b))) => a.data.extend(b.data),
        (Some(Scalar::JsonData(a)), Some(Scalar::JsonData(b))) => a.data.extend(b.data),
        _ => {}
    }
}

fn append_vectors(d: &mut VectorField, s: VectorField) {
    match (&mut d.data, s.data) {
        (Some(Vector::FloatVector(a)), Some(Vector::FloatVector(b))) => a.data.extend(b.data),
        (Some(Vector::BinaryVector(a)), Some(Vector::BinaryVector(b)))
        | (Some(Vector::Float16Vector(a)), Some(Vector::Float16Vector(b)))
        | (Some(Vector::Bfloat16Vector(a)), Some(Vector::Bfloat16Vector(b))) => a.extend(b),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::schema::{FloatArray, LongArray, StringArray};

    fn insert(coll: i64, pks: &[i64], names: &[&str]) -> InsertRequest {
        InsertRequest {
            collection_id: coll,
            collection_name: "c".into(),
            partition_name: "_default".into(),
            num_rows: pks.len() as u64,
            fields_data: vec![
                FieldData {
                    field_name: "pk".into(),
                    field: Some(Field::Scalars(ScalarField {
                        data: Some(Scalar::LongData(LongArray { data: pks.to_vec() })),
                    })),
                    ..Default::default()
                },
                FieldData {
                    field_name: "s".into(),
                    field: Some(Field::Scalars(ScalarField {
                        data: Some(Scalar::StringData(StringArray {
                            data: names.iter().map(|s| s.to_string()).collect(),
                        })),
                    })),
                    ..Default::default()
                },
                FieldData {
                    field_name: "v".into(),
                    field: Some(Field::Vectors(VectorField {
                        dim: 2,
                        data: Some(Vector::FloatVector(FloatArray {
                            data: pks.iter().flat_map(|p| [*p as f32, 0.5]).collect(),
                        })),
                    })),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn merges_columns_in_order() {
        let mut b = InsertBatch::new(insert(1, &[1, 2], &["a", "b"]), 10);
        let next = insert(1, &[3], &["c"]);
        assert!(b.accepts(&next));
        b.push(next, 5);
        assert_eq!(b.rows, 3);
        assert_eq!(b.bytes, 15);
        match &b.columns[0].field {
            Some(Field::Scalars(ScalarField {
                data: Some(Scalar::LongData(l)),
            })) => {
                assert_eq!(l.data, vec![1, 2, 3])
            }
            other => panic!("{other:?}"),
        }
        match &b.columns[2].field {
            Some(Field::Vectors(VectorField {
                data: Some(Vector::FloatVector(f)),
                ..
            })) => {
                assert_eq!(f.data, vec![1.0, 0.5, 2.0, 0.5, 3.0, 0.5])
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refuses_other_destinations_and_shapes() {
        let b = InsertBatch::new(insert(1, &[1], &["a"]), 1);
        assert!(!b.accepts(&insert(2, &[2], &["b"])));
        let mut other_partition = insert(1, &[2], &["b"]);
        other_partition.partition_name = "p1".into();
        assert!(!b.accepts(&other_partition));
        // The same name, re-created on the source after a drop: another
        // partition, whose rows must not be written with the old one's.
        let mut reborn = insert(1, &[2], &["b"]);
        reborn.partition_id = 9;
        assert!(!b.accepts(&reborn));
        let mut fewer = insert(1, &[2], &["b"]);
        fewer.fields_data.pop();
        assert!(!b.accepts(&fewer));
    }
}
