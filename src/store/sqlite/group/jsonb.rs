//! The group commit's rows in SQLite's binary JSON (JSONB, <https://sqlite.org/jsonb.html>):
//! `jsonb_each` reads a JSONB blob as it is, where text JSON is first translated into JSONB
//! (a tenth of the writer's instructions in a profile under load). Only what the rows hold is
//! written: arrays, strings, integers, floats, booleans and nulls.
//!
//! Each element is a header (its type in the low four bits, its payload's size in the high
//! four, or in the 1, 2, 4 or 8 bytes after them) and its payload. Strings are written as
//! `TEXTRAW` (the text as is, escaped by SQLite when it renders JSON), integers and floats as
//! their JSON text.

use serde::ser::{self, Serialize};

const NULL: u8 = 0;
const TRUE: u8 = 1;
const FALSE: u8 = 2;
const INT: u8 = 3;
const FLOAT: u8 = 5;
const TEXTRAW: u8 = 10;
const ARRAY: u8 = 11;

/// `value` as JSONB.
pub(super) fn to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(256);
    value.serialize(&mut Writer { out: &mut out })?;
    Ok(out)
}

/// A value JSONB cannot hold here (a map, a struct, bytes).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct Error(String);

impl ser::Error for Error {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Error(msg.to_string())
    }
}

fn unsupported(what: &str) -> Error {
    Error(format!(
        "a row holds {what}, which the group commit does not write"
    ))
}

struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

/// Appends an element's header for a payload of `size` bytes, in the fewest bytes.
fn header(out: &mut Vec<u8>, kind: u8, size: usize) {
    match size {
        0..=11 => out.push(kind | (size as u8) << 4),
        12..=0xff => out.extend_from_slice(&[kind | 12 << 4, size as u8]),
        0x100..=0xffff => {
            out.push(kind | 13 << 4);
            out.extend_from_slice(&(size as u16).to_be_bytes());
        }
        _ if size <= u32::MAX as usize => {
            out.push(kind | 14 << 4);
            out.extend_from_slice(&(size as u32).to_be_bytes());
        }
        _ => {
            out.push(kind | 15 << 4);
            out.extend_from_slice(&(size as u64).to_be_bytes());
        }
    }
}

impl Writer<'_> {
    fn element(&mut self, kind: u8, payload: &[u8]) {
        header(self.out, kind, payload.len());
        self.out.extend_from_slice(payload);
    }

    fn int(&mut self, n: impl itoa::Integer) {
        self.element(INT, itoa::Buffer::new().format(n).as_bytes());
    }
}

/// An array being written: its elements go after `start`, and its header is put in front of
/// them once their size is known.
struct Array<'a, 'b> {
    writer: &'a mut Writer<'b>,
    start: usize,
}

impl Array<'_, '_> {
    fn close(self) {
        let size = self.writer.out.len() - self.start;
        let mut head = Vec::with_capacity(9);
        header(&mut head, ARRAY, size);
        self.writer.out.splice(self.start..self.start, head);
    }
}

/// `serialize_*` for integer types: their decimal text, as an `INT` element.
macro_rules! integers {
    ($($method:ident: $t:ty),* $(,)?) => {
        $(
            fn $method(self, v: $t) -> Result<(), Error> {
                self.int(v);
                Ok(())
            }
        )*
    };
}

impl<'a, 'b> ser::Serializer for &'a mut Writer<'b> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Array<'a, 'b>;
    type SerializeTuple = Array<'a, 'b>;
    type SerializeTupleStruct = Array<'a, 'b>;
    type SerializeTupleVariant = ser::Impossible<(), Error>;
    type SerializeMap = ser::Impossible<(), Error>;
    type SerializeStruct = ser::Impossible<(), Error>;
    type SerializeStructVariant = ser::Impossible<(), Error>;

    fn serialize_bool(self, v: bool) -> Result<(), Error> {
        self.out.push(if v { TRUE } else { FALSE });
        Ok(())
    }
    integers! {
        serialize_i8: i8,
        serialize_i16: i16,
        serialize_i32: i32,
        serialize_i64: i64,
        serialize_u8: u8,
        serialize_u16: u16,
        serialize_u32: u32,
        serialize_u64: u64,
    }
    fn serialize_f32(self, v: f32) -> Result<(), Error> {
        self.serialize_f64(f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> Result<(), Error> {
        // As serde_json writes it: a number, or null when it is not finite.
        match serde_json::Number::from_f64(v) {
            Some(n) => self.element(FLOAT, n.to_string().as_bytes()),
            None => self.out.push(NULL),
        }
        Ok(())
    }
    fn serialize_char(self, v: char) -> Result<(), Error> {
        self.serialize_str(v.encode_utf8(&mut [0; 4]))
    }
    fn serialize_str(self, v: &str) -> Result<(), Error> {
        self.element(TEXTRAW, v.as_bytes());
        Ok(())
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<(), Error> {
        Err(unsupported("bytes"))
    }
    fn serialize_none(self) -> Result<(), Error> {
        self.out.push(NULL);
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Error> {
        self.out.push(NULL);
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Error> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        name: &'static str,
    ) -> Result<(), Error> {
        self.serialize_str(name)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), Error> {
        Err(unsupported("an enum with data"))
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Array<'a, 'b>, Error> {
        let start = self.out.len();
        Ok(Array {
            writer: self,
            start,
        })
    }
    fn serialize_tuple(self, len: usize) -> Result<Array<'a, 'b>, Error> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _: &'static str, len: usize) -> Result<Array<'a, 'b>, Error> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Error> {
        Err(unsupported("an enum with data"))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Error> {
        Err(unsupported("a map"))
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, Error> {
        Err(unsupported("a struct"))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Error> {
        Err(unsupported("an enum with data"))
    }
}

/// The three ways serde writes an array, all written alike.
macro_rules! array {
    ($trait:ident, $method:ident) => {
        impl ser::$trait for Array<'_, '_> {
            type Ok = ();
            type Error = Error;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
                value.serialize(&mut *self.writer)
            }
            fn end(self) -> Result<(), Error> {
                self.close();
                Ok(())
            }
        }
    };
}

array!(SerializeSeq, serialize_element);
array!(SerializeTuple, serialize_element);
array!(SerializeTupleStruct, serialize_field);

#[cfg(test)]
mod tests {
    use super::to_vec;
    use sqlx::Connection;

    #[tokio::test]
    async fn sqlite_reads_the_rows_as_serde_json_writes_them() {
        let mut conn = sqlx::SqliteConnection::connect("sqlite::memory:")
            .await
            .unwrap();
        let long = "é\"\\".repeat(30_000);
        let rows = vec![
            (
                "plain".to_string(),
                -42_i64,
                None::<&str>,
                "quote \" back \\ nl \n tab \t ctl \u{1} emoji 😀".to_string(),
                u64::MAX,
                true,
                1.5_f64,
            ),
            (String::new(), 0, Some("x"), long.clone(), 7, false, -0.25),
        ];
        let blob = to_vec(&rows).unwrap();
        let text: String = sqlx::query_scalar("SELECT json(?)")
            .bind(blob.clone())
            .fetch_one(&mut conn)
            .await
            .unwrap();
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, serde_json::to_value(&rows).unwrap());
        // Fields picked the way the group commit's statements pick them.
        let picked: Vec<(String, i64, Option<String>, String)> = sqlx::query_as(
            "SELECT j.value->>0, j.value->>1, j.value->>2, j.value->>3 FROM jsonb_each(?) AS j",
        )
        .bind(blob)
        .fetch_all(&mut conn)
        .await
        .unwrap();
        assert_eq!(picked[0].0, "plain");
        assert_eq!(picked[0].1, -42);
        assert_eq!(picked[0].2, None);
        assert_eq!(picked[0].3, rows[0].3);
        assert_eq!(picked[1].0, "");
        assert_eq!(picked[1].2.as_deref(), Some("x"));
        assert_eq!(picked[1].3, long);
        let empty = to_vec(&Vec::<(String, i64)>::new()).unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM jsonb_each(?)")
            .bind(empty)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(n, 0);
    }
}
