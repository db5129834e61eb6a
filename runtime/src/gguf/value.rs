//! Metadata values: the thirteen GGUF value types and borrowed views of decoded values. Arrays stay
//! undecoded bytes in the map until iterated, so a 150k-entry token list costs nothing to open.

use std::fmt;

use super::cursor::Cursor;
use super::error::GgufError;
use super::MAX_ARRAY_DEPTH;

/// GGUF metadata value type ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl ValueType {
    pub fn from_id(id: u32) -> Option<Self> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    pub fn id(self) -> u32 {
        use ValueType::*;
        match self {
            U8 => 0,
            I8 => 1,
            U16 => 2,
            I16 => 3,
            U32 => 4,
            I32 => 5,
            F32 => 6,
            Bool => 7,
            String => 8,
            Array => 9,
            U64 => 10,
            I64 => 11,
            F64 => 12,
        }
    }

    /// Encoded size of a fixed-size value, `None` for strings and arrays.
    pub fn fixed_size(self) -> Option<u64> {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => Some(1),
            U16 | I16 => Some(2),
            U32 | I32 | F32 => Some(4),
            U64 | I64 | F64 => Some(8),
            String | Array => None,
        }
    }

    /// Fewest bytes one value of this type occupies (a string's length prefix, an array's header).
    pub fn min_size(self) -> u64 {
        match self {
            ValueType::String => 8,
            ValueType::Array => 12,
            t => t.fixed_size().unwrap_or(1),
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

/// A metadata value borrowed from the file.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(&'a str),
    Array(ArrayView<'a>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl<'a> Value<'a> {
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(_) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// Any integer type holding a non-negative value, widened; writers disagree on int widths.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any signed or unsigned integer that fits an i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v as i64),
            Value::I16(v) => Some(v as i64),
            Value::I32(v) => Some(v as i64),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// F32 or F64 (narrowed).
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            Value::F32(v) => Some(v),
            Value::F64(v) => Some(v as f32),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&'a str> {
        match *self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<ArrayView<'a>> {
        match *self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

impl fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::String(s) => write!(f, "{s:?}"),
            Value::Array(a) => write!(f, "[{}; {}]", a.elem_type(), a.len()),
            Value::U8(v) => write!(f, "{v}"),
            Value::I8(v) => write!(f, "{v}"),
            Value::U16(v) => write!(f, "{v}"),
            Value::I16(v) => write!(f, "{v}"),
            Value::U32(v) => write!(f, "{v}"),
            Value::I32(v) => write!(f, "{v}"),
            Value::U64(v) => write!(f, "{v}"),
            Value::I64(v) => write!(f, "{v}"),
            Value::F32(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
            Value::Bool(v) => write!(f, "{v}"),
        }
    }
}

/// An array value: its element type, length and the (already validated) bytes of its elements.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ArrayView<'a> {
    elem: ValueType,
    len: u64,
    bytes: &'a [u8],
}

impl<'a> ArrayView<'a> {
    pub fn elem_type(&self) -> ValueType {
        self.elem
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The elements in order.
    pub fn iter(&self) -> impl Iterator<Item = Value<'a>> + 'a {
        let mut cur = Cursor {
            bytes: self.bytes,
            pos: 0,
            path: "",
        };
        let elem = self.elem;
        // The bytes were validated by `parse_value` when the file was opened, so decoding cannot
        // fail here; `map_while` merely avoids a panic path.
        (0..self.len).map_while(move |_| parse_value(&mut cur, elem, "", 0).ok())
    }

    /// The elements as strings, `None` if the array holds another type.
    pub fn strings(&self) -> Option<impl Iterator<Item = &'a str> + 'a> {
        (self.elem == ValueType::String).then(|| self.iter().filter_map(|v| v.as_str()))
    }

    /// Integer elements widened to i64, `None` for non-integer arrays.
    pub fn ints(&self) -> Option<Vec<i64>> {
        self.iter().map(|v| v.as_i64()).collect()
    }

    /// Float elements, `None` for non-float arrays.
    pub fn floats(&self) -> Option<Vec<f32>> {
        self.iter().map(|v| v.as_f32()).collect()
    }
}

/// Reads one value of type `ty`, validating nested arrays down to [`MAX_ARRAY_DEPTH`].
pub(crate) fn parse_value<'a>(
    cur: &mut Cursor<'a>,
    ty: ValueType,
    key: &str,
    depth: usize,
) -> Result<Value<'a>, GgufError> {
    let what = || format!("value of key {key}");
    let fixed =
        |cur: &mut Cursor<'a>, n: u64| -> Result<&'a [u8], GgufError> { cur.take(n, &what) };
    Ok(match ty {
        ValueType::U8 => Value::U8(fixed(cur, 1)?[0]),
        ValueType::I8 => Value::I8(fixed(cur, 1)?[0] as i8),
        ValueType::Bool => Value::Bool(fixed(cur, 1)?[0] != 0),
        ValueType::U16 => Value::U16(u16::from_le_bytes(arr(fixed(cur, 2)?))),
        ValueType::I16 => Value::I16(i16::from_le_bytes(arr(fixed(cur, 2)?))),
        ValueType::U32 => Value::U32(u32::from_le_bytes(arr(fixed(cur, 4)?))),
        ValueType::I32 => Value::I32(i32::from_le_bytes(arr(fixed(cur, 4)?))),
        ValueType::F32 => Value::F32(f32::from_le_bytes(arr(fixed(cur, 4)?))),
        ValueType::U64 => Value::U64(u64::from_le_bytes(arr(fixed(cur, 8)?))),
        ValueType::I64 => Value::I64(i64::from_le_bytes(arr(fixed(cur, 8)?))),
        ValueType::F64 => Value::F64(f64::from_le_bytes(arr(fixed(cur, 8)?))),
        ValueType::String => Value::String(cur.str(&what)?),
        ValueType::Array => {
            if depth >= MAX_ARRAY_DEPTH {
                return Err(GgufError::TooDeep {
                    path: cur.path.to_string(),
                    key: key.to_string(),
                    max: MAX_ARRAY_DEPTH,
                });
            }
            let id = cur.u32(&what)?;
            let elem = ValueType::from_id(id).ok_or_else(|| GgufError::UnknownValueType {
                path: cur.path.to_string(),
                key: key.to_string(),
                ty: id,
            })?;
            let len = cur.count(elem.min_size(), &what)?;
            let start = cur.pos;
            match elem.fixed_size() {
                Some(size) => {
                    cur.take(len * size, &what)?;
                }
                None => {
                    for _ in 0..len {
                        parse_value(cur, elem, key, depth + 1)?;
                    }
                }
            }
            Value::Array(ArrayView {
                elem,
                len,
                bytes: &cur.bytes[start..cur.pos],
            })
        }
    })
}

fn arr<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[..N]);
    a
}
