//! The streaming writer. The header (metadata and tensor infos with their offsets) is known before
//! any data, so it is written first and each tensor's bytes follow in order as the caller produces
//! them: a converter holds one tensor at a time, never the whole model. Output goes to
//! `<name>.tmp` beside the target and is renamed into place by [`GgufWriter::finish`], so readers
//! never see a half-written file.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::chunks::ChunkWriter;
use super::error::GgufError;
use super::value::ValueType;
use super::{DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS};
use crate::quant::GgmlType;

/// A metadata value to write.
#[derive(Clone, Debug, PartialEq)]
pub enum OwnedValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    /// Element type stated explicitly so empty arrays are typed too.
    Array(ValueType, Vec<OwnedValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl OwnedValue {
    pub fn value_type(&self) -> ValueType {
        match self {
            Self::U8(_) => ValueType::U8,
            Self::I8(_) => ValueType::I8,
            Self::U16(_) => ValueType::U16,
            Self::I16(_) => ValueType::I16,
            Self::U32(_) => ValueType::U32,
            Self::I32(_) => ValueType::I32,
            Self::F32(_) => ValueType::F32,
            Self::Bool(_) => ValueType::Bool,
            Self::String(_) => ValueType::String,
            Self::Array(..) => ValueType::Array,
            Self::U64(_) => ValueType::U64,
            Self::I64(_) => ValueType::I64,
            Self::F64(_) => ValueType::F64,
        }
    }

    /// A string array.
    pub fn strings<S: Into<String>>(items: impl IntoIterator<Item = S>) -> Self {
        Self::Array(
            ValueType::String,
            items.into_iter().map(|s| Self::String(s.into())).collect(),
        )
    }

    pub fn i32s(items: impl IntoIterator<Item = i32>) -> Self {
        Self::Array(ValueType::I32, items.into_iter().map(Self::I32).collect())
    }

    pub fn f32s(items: impl IntoIterator<Item = f32>) -> Self {
        Self::Array(ValueType::F32, items.into_iter().map(Self::F32).collect())
    }

    fn encode(&self, out: &mut Vec<u8>) -> Result<(), String> {
        match self {
            Self::U8(v) => out.push(*v),
            Self::I8(v) => out.push(*v as u8),
            Self::Bool(v) => out.push(*v as u8),
            Self::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
            Self::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
            Self::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Self::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Self::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Self::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Self::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Self::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Self::String(s) => encode_str(s, out),
            Self::Array(elem, items) => {
                out.extend_from_slice(&elem.id().to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for item in items {
                    if item.value_type() != *elem {
                        return Err(format!("array of {elem} holds a {}", item.value_type()));
                    }
                    item.encode(out)?;
                }
            }
        }
        Ok(())
    }
}

fn encode_str(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A tensor announced in the header, its data to follow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingTensor {
    pub name: String,
    /// ggml order (innermost first).
    pub shape: Vec<u64>,
    pub ty: GgmlType,
}

impl PendingTensor {
    /// Bytes of data, or `None` when the row length is not a whole number of blocks.
    pub fn size(&self) -> Option<u64> {
        let ne0 = self.shape.first().copied().unwrap_or(1);
        if ne0 % self.ty.block_size() as u64 != 0 {
            return None;
        }
        self.ty
            .bytes_for(self.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d))?)
    }
}

/// Writes one GGUF v3 file.
pub struct GgufWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<ChunkWriter<File>>,
    tensors: Vec<(PendingTensor, u64)>,
    next: usize,
    alignment: u64,
    written: u64,
}

impl GgufWriter {
    /// Writes the header of a file with `metadata` and `tensors` (in data order) to a temporary
    /// file beside `path`. `general.alignment` is added when `alignment` differs from 32.
    pub fn create(
        path: impl AsRef<Path>,
        metadata: &[(String, OwnedValue)],
        tensors: Vec<PendingTensor>,
        alignment: u64,
    ) -> Result<Self, GgufError> {
        let path = path.as_ref().to_path_buf();
        let p = path.display().to_string();
        let bad = |reason: String| GgufError::Writer {
            path: p.clone(),
            reason,
        };
        if alignment == 0 || !alignment.is_power_of_two() {
            return Err(GgufError::BadAlignment {
                path: p.clone(),
                value: alignment,
            });
        }
        let mut head = Vec::new();
        head.extend_from_slice(&MAGIC);
        head.extend_from_slice(&3u32.to_le_bytes());
        head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        let extra = (alignment != DEFAULT_ALIGNMENT).then(|| {
            (
                "general.alignment".to_string(),
                OwnedValue::U32(alignment as u32),
            )
        });
        let all: Vec<&(String, OwnedValue)> = metadata.iter().chain(extra.as_ref()).collect();
        head.extend_from_slice(&(all.len() as u64).to_le_bytes());
        let mut seen = std::collections::HashSet::new();
        for (key, value) in all {
            if !seen.insert(key.as_str()) {
                return Err(GgufError::DuplicateKey {
                    path: p.clone(),
                    key: key.clone(),
                });
            }
            encode_str(key, &mut head);
            head.extend_from_slice(&value.value_type().id().to_le_bytes());
            value
                .encode(&mut head)
                .map_err(|e| bad(format!("key {key}: {e}")))?;
        }
        let mut offset = 0u64;
        let mut placed = Vec::with_capacity(tensors.len());
        let mut names = std::collections::HashSet::new();
        for t in tensors {
            if !names.insert(t.name.clone()) {
                return Err(GgufError::DuplicateTensor {
                    path: p.clone(),
                    tensor: t.name,
                });
            }
            if t.shape.len() > MAX_DIMS {
                return Err(GgufError::TooManyDims {
                    path: p.clone(),
                    tensor: t.name,
                    n_dims: t.shape.len() as u32,
                    max: MAX_DIMS,
                });
            }
            let size = t.size().ok_or_else(|| GgufError::BadShape {
                path: p.clone(),
                tensor: t.name.clone(),
                shape: t.shape.clone(),
                ty: t.ty,
                reason: format!("rows are not whole {}-element blocks", t.ty.block_size()),
            })?;
            encode_str(&t.name, &mut head);
            head.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
            for d in &t.shape {
                head.extend_from_slice(&d.to_le_bytes());
            }
            head.extend_from_slice(&t.ty.id().to_le_bytes());
            head.extend_from_slice(&offset.to_le_bytes());
            placed.push((t, size));
            offset += size.div_ceil(alignment) * alignment;
        }
        head.resize(
            (head.len() as u64).div_ceil(alignment) as usize * alignment as usize,
            0,
        );

        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let io = |source| GgufError::Io {
            path: tmp.display().to_string(),
            source,
        };
        let mut out = ChunkWriter::new(File::create(&tmp).map_err(io)?);
        out.write_all(&head).map_err(io)?;
        Ok(Self {
            path,
            tmp,
            out: Some(out),
            tensors: placed,
            next: 0,
            alignment,
            written: 0,
        })
    }

    /// The next tensor whose data is expected, if any remain.
    pub fn next_tensor(&self) -> Option<&PendingTensor> {
        self.tensors.get(self.next).map(|(t, _)| t)
    }

    /// Appends the data of the next tensor, which must be `name` and exactly its announced size.
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<(), GgufError> {
        let p = self.path.display().to_string();
        let Some((t, size)) = self.tensors.get(self.next) else {
            return Err(GgufError::Writer {
                path: p,
                reason: format!("tensor {name} was not announced"),
            });
        };
        if t.name != name {
            return Err(GgufError::Writer {
                path: p,
                reason: format!("expected data of tensor {}, got {name}", t.name),
            });
        }
        if data.len() as u64 != *size {
            return Err(GgufError::TensorData {
                path: p,
                tensor: name.into(),
                reason: format!("{} bytes given, {size} announced", data.len()),
            });
        }
        let pad = size.div_ceil(self.alignment) * self.alignment - size;
        let tmp = self.tmp.display().to_string();
        let out = self.out.as_mut().ok_or_else(|| GgufError::Writer {
            path: p,
            reason: "already finished".into(),
        })?;
        let io = |source| GgufError::Io {
            path: tmp.clone(),
            source,
        };
        out.write_all(data).map_err(io)?;
        out.write_all(&vec![0u8; pad as usize]).map_err(io)?;
        self.written += size + pad;
        self.next += 1;
        Ok(())
    }

    /// Flushes, syncs and renames the file into place once every tensor has been written.
    pub fn finish(mut self) -> Result<PathBuf, GgufError> {
        if let Some((t, _)) = self.tensors.get(self.next) {
            return Err(GgufError::Writer {
                path: self.path.display().to_string(),
                reason: format!("tensor {} was never written", t.name),
            });
        }
        let tmp = self.tmp.display().to_string();
        let io = |source| GgufError::Io {
            path: tmp.clone(),
            source,
        };
        if let Some(out) = self.out.take() {
            let file = out.finish().map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        std::fs::rename(&self.tmp, &self.path).map_err(io)?;
        Ok(self.path.clone())
    }
}

impl Drop for GgufWriter {
    fn drop(&mut self) {
        // An unfinished writer leaves no partial file behind.
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
