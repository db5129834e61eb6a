//! The zero-copy reader: [`GgufFile::open`] maps the file, validates the whole header (every count,
//! string, value and tensor extent) and keeps only offsets; values and tensor data are then handed
//! out as views borrowing the map.

use std::collections::HashMap;
use std::path::Path;

use memmap2::Mmap;

use super::cursor::Cursor;
use super::error::GgufError;
use super::value::{parse_value, Value, ValueType};
use super::{DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS};
use crate::quant::{dequant::dequantize_to_vec, GgmlType, QuantError};

/// Where a metadata value sits in the file.
#[derive(Clone, Debug)]
struct KvEntry {
    key: String,
    ty: ValueType,
    pos: usize,
}

/// One tensor's header entry, validated against the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `shape[0]` is the innermost (contiguous) dimension.
    pub shape: Vec<u64>,
    pub ty: GgmlType,
    /// Relative to the start of the data section.
    pub offset: u64,
    /// Bytes of data.
    pub size: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().product()
    }
}

/// The validated header of a GGUF byte buffer (offsets only, no borrows).
#[derive(Clone, Debug)]
pub struct Header {
    pub version: u32,
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_offset: u64,
    kvs: Vec<KvEntry>,
    kv_index: HashMap<String, usize>,
    pub tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

/// A memory-mapped GGUF file.
pub struct GgufFile {
    path: String,
    map: Mmap,
    header: Header,
}

/// A tensor's info and its bytes, borrowed from the map.
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a> {
    pub info: &'a TensorInfo,
    pub data: &'a [u8],
}

impl<'a> TensorView<'a> {
    pub fn name(&self) -> &'a str {
        &self.info.name
    }

    pub fn ty(&self) -> GgmlType {
        self.info.ty
    }

    pub fn shape(&self) -> &'a [u64] {
        &self.info.shape
    }

    /// The data as f32s, for F32 tensors (the map and GGUF alignment keep them aligned).
    pub fn as_f32(&self) -> Option<&'a [f32]> {
        (self.info.ty == GgmlType::F32)
            .then(|| bytemuck::try_cast_slice(self.data).ok())
            .flatten()
    }

    /// The data as halves, for F16 tensors.
    pub fn as_f16(&self) -> Option<&'a [half::f16]> {
        (self.info.ty == GgmlType::F16)
            .then(|| bytemuck::try_cast_slice(self.data).ok())
            .flatten()
    }

    /// Bytes of one row (`shape[0]` elements).
    pub fn row_bytes(&self) -> usize {
        let ne0 = self.info.shape.first().copied().unwrap_or(1);
        (ne0 as usize) / self.info.ty.block_size() * self.info.ty.type_size()
    }

    /// The rows, each `shape[0]` elements of encoded blocks.
    pub fn rows(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.data.chunks_exact(self.row_bytes().max(1))
    }

    /// All elements decoded to f32 (a copy: for tests, tools and small tensors).
    pub fn dequantize(&self) -> Result<Vec<f32>, QuantError> {
        dequantize_to_vec(self.info.ty, self.data, self.info.n_elements() as usize)
    }
}

/// Where [`GgufFile::open_with`] keeps the file's bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Residence {
    /// Mapped from the page cache: zero copy, nothing read until a tensor is touched, shared
    /// with other processes that map the file.
    #[default]
    Mapped,
    /// Read once into anonymous memory, on transparent huge pages where the OS grants them
    /// (llama.cpp's `--no-mmap`). Costs a read of the whole file at load and memory of its own,
    /// and saves the page walks of streaming the weights through 4 KiB page-cache pages: on the
    /// 2-vCPU KVM VM two threads read 2 MiB pages 1.15-1.2x as fast as the same bytes mapped in
    /// 4 KiB pages. Where the page cache holds the file in 2 MiB folios and maps them whole
    /// (Linux 6.18 on ext4 did), the map reads as fast and this gains nothing.
    Copied,
}

impl Residence {
    /// `Copied` when `no_mmap` (the CLI's `--no-mmap`), else `Mapped`.
    pub fn from_no_mmap(no_mmap: bool) -> Self {
        if no_mmap {
            Self::Copied
        } else {
            Self::Mapped
        }
    }
}

impl GgufFile {
    /// Maps and validates `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        Self::open_with(path, Residence::Mapped)
    }

    /// Validates `path`, its bytes kept as `residence` says.
    pub fn open_with(path: impl AsRef<Path>, residence: Residence) -> Result<Self, GgufError> {
        let p = path.as_ref().display().to_string();
        let io = |source| GgufError::Io {
            path: p.clone(),
            source,
        };
        let file = std::fs::File::open(path.as_ref()).map_err(io)?;
        let map = match residence {
            Residence::Mapped => map_readonly(&file).map_err(io)?,
            Residence::Copied => read_resident(&file).map_err(io)?,
        };
        let header = parse_header(&map, &p)?;
        Ok(Self {
            path: p,
            map,
            header,
        })
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn version(&self) -> u32 {
        self.header.version
    }

    pub fn alignment(&self) -> u64 {
        self.header.alignment
    }

    pub fn data_offset(&self) -> u64 {
        self.header.data_offset
    }

    pub fn file_size(&self) -> u64 {
        self.map.len() as u64
    }

    /// Metadata keys in file order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.header.kvs.iter().map(|kv| kv.key.as_str())
    }

    /// The metadata in file order.
    pub fn metadata(&self) -> impl Iterator<Item = (&str, Value<'_>)> {
        self.keys().filter_map(move |k| Some((k, self.get(k)?)))
    }

    pub fn get(&self, key: &str) -> Option<Value<'_>> {
        let kv = &self.header.kvs[*self.header.kv_index.get(key)?];
        let mut cur = Cursor {
            bytes: &self.map,
            pos: kv.pos,
            path: &self.path,
        };
        // Validated in `parse_header`.
        parse_value(&mut cur, kv.ty, key, 0).ok()
    }

    pub fn tensor_infos(&self) -> &[TensorInfo] {
        &self.header.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<TensorView<'_>> {
        let info = &self.header.tensors[*self.header.tensor_index.get(name)?];
        Some(self.view(info))
    }

    pub fn tensors(&self) -> impl Iterator<Item = TensorView<'_>> {
        self.header.tensors.iter().map(|info| self.view(info))
    }

    fn view<'a>(&'a self, info: &'a TensorInfo) -> TensorView<'a> {
        // Extents were checked against the map in `parse_header`.
        let start = (self.header.data_offset + info.offset) as usize;
        TensorView {
            info,
            data: &self.map[start..start + info.size as usize],
        }
    }
}

/// The whole of `file` read into anonymous memory, advised onto huge pages before the read
/// faults it in, then made read-only. An empty file is mapped as it is (an anonymous map cannot
/// be empty).
fn read_resident(file: &std::fs::File) -> std::io::Result<Mmap> {
    use std::io::Read;
    let len = usize::try_from(file.metadata()?.len())
        .map_err(|_| std::io::Error::other("file larger than the address space"))?;
    if len == 0 {
        return map_readonly(file);
    }
    let mut buf = huge_anon(len)?;
    // `read_exact` fails on a file that shrank since `metadata`; one that grew is read to `len`.
    let mut reader = file;
    reader.read_exact(&mut buf)?;
    buf.make_read_only()
}

/// `len` bytes of zeroed anonymous memory, advised onto transparent huge pages before anything
/// faults it in: the weights of `Residence::Copied`, the bandwidth probe's buffer, which must
/// sit on the same kind of pages to stay the stronger reader, and the weights of the kernel
/// benchmark's stream. Refused advice (no THP in this kernel, or THP off) leaves 4 KiB pages:
/// slower, still right.
pub fn huge_anon(len: usize) -> std::io::Result<memmap2::MmapMut> {
    let map = memmap2::MmapMut::map_anon(len)?;
    #[cfg(target_os = "linux")]
    let _ = map.advise(memmap2::Advice::HugePage);
    Ok(map)
}

/// Maps a model file read-only. The one place the project maps files, so the converter's reading of
/// safetensors checkpoints shares this contract instead of carrying its own `unsafe`.
///
/// On Linux the map is advised onto huge pages: the page cache then reads what the map faults in
/// as 2 MiB folios, which the map enters with huge-page entries, where it would otherwise ramp
/// its folios up from 4 KiB as readahead grows. Measured on a 2-vCPU Xeon (Linux 6.18, ext4),
/// after dropping the page cache and decoding once: 1.83 GB of the 1.93 GB 3B Q4_K_M file in
/// 2 MiB folios with the advice, 0.60 GB without. Decode from small folios misses the TLB on
/// every 4 KiB page: 74-75% of the bandwidth bound against 88-90% from the same bytes in 2 MiB
/// folios (see `chunks`). Pages already cached stay as they are (ext4 cannot collapse them:
/// `MADV_COLLAPSE` is refused), which is why [`super::writer::GgufWriter`] writes whole 4 MiB
/// chunks. Refused advice leaves the map as it was: slower, still right.
pub fn map_readonly(file: &std::fs::File) -> std::io::Result<Mmap> {
    // SAFETY: the map is read-only and we never hand out `&mut`; the remaining hazard, another
    // process truncating or rewriting the file while it is mapped, is inherent to memory-mapped
    // model files (llama.cpp has the same contract) and documented on `GgufFile`.
    let map = unsafe { Mmap::map(file) }?;
    #[cfg(target_os = "linux")]
    let _ = map.advise(memmap2::Advice::HugePage);
    Ok(map)
}

/// Parses and validates a whole GGUF header from `bytes` (the fuzz entry point). `path` only
/// labels errors.
pub fn parse_header(bytes: &[u8], path: &str) -> Result<Header, GgufError> {
    let mut cur = Cursor {
        bytes,
        pos: 0,
        path,
    };
    let magic = cur.take(4, &|| "magic".into())?;
    if magic != MAGIC {
        return Err(GgufError::BadMagic {
            path: path.into(),
            found: magic.to_vec(),
        });
    }
    let version = cur.u32(&|| "version".into())?;
    if version & 0xffff == 0 && version != 0 {
        return Err(GgufError::BigEndian {
            path: path.into(),
            version,
        });
    }
    if !(2..=3).contains(&version) {
        return Err(GgufError::UnsupportedVersion {
            path: path.into(),
            version,
        });
    }
    let n_tensors = cur.u64(&|| "tensor count".into())?;
    let n_kv = cur.count(8 + 4 + 1, &|| "metadata count".into())?;
    // Tensor infos follow the metadata; each needs at least name length, n_dims, type and offset.
    if n_tensors.saturating_mul(8 + 4 + 4 + 8) > cur.remaining() {
        return Err(GgufError::AbsurdCount {
            path: path.into(),
            what: "tensor count".into(),
            count: n_tensors,
            remaining: cur.remaining(),
        });
    }

    let mut kvs = Vec::with_capacity(n_kv as usize);
    let mut kv_index = HashMap::with_capacity(n_kv as usize);
    for i in 0..n_kv {
        let key = cur.str(&|| format!("key of metadata entry {i}"))?;
        let id = cur.u32(&|| format!("value type of key {key}"))?;
        let ty = ValueType::from_id(id).ok_or_else(|| GgufError::UnknownValueType {
            path: path.into(),
            key: key.into(),
            ty: id,
        })?;
        let pos = cur.pos;
        parse_value(&mut cur, ty, key, 0)?;
        if kv_index.insert(key.to_string(), kvs.len()).is_some() {
            return Err(GgufError::DuplicateKey {
                path: path.into(),
                key: key.into(),
            });
        }
        kvs.push(KvEntry {
            key: key.to_string(),
            ty,
            pos,
        });
    }

    let alignment = match kv_index.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(&i) => {
            let mut c = Cursor {
                bytes,
                pos: kvs[i].pos,
                path,
            };
            let v = parse_value(&mut c, kvs[i].ty, "general.alignment", 0)?;
            let a = v.as_u64().ok_or_else(|| GgufError::KeyType {
                path: path.into(),
                key: "general.alignment".into(),
                expected: "unsigned integer".into(),
                found: kvs[i].ty.to_string(),
            })?;
            if a == 0 || !a.is_power_of_two() {
                return Err(GgufError::BadAlignment {
                    path: path.into(),
                    value: a,
                });
            }
            a
        }
    };

    let mut tensors = Vec::with_capacity(n_tensors as usize);
    let mut tensor_index = HashMap::with_capacity(n_tensors as usize);
    for i in 0..n_tensors {
        let name = cur.str(&|| format!("name of tensor {i}"))?;
        let what = || format!("tensor {name}");
        let n_dims = cur.u32(&what)?;
        if n_dims as usize > MAX_DIMS {
            return Err(GgufError::TooManyDims {
                path: path.into(),
                tensor: name.into(),
                n_dims,
                max: MAX_DIMS,
            });
        }
        let mut shape = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            shape.push(cur.u64(&what)?);
        }
        let id = cur.u32(&what)?;
        let ty = GgmlType::from_id(id).ok_or_else(|| GgufError::UnknownType {
            path: path.into(),
            tensor: name.into(),
            ty: id,
        })?;
        let offset = cur.u64(&what)?;
        let size = tensor_size(&shape, ty).map_err(|reason| GgufError::BadShape {
            path: path.into(),
            tensor: name.into(),
            shape: shape.clone(),
            ty,
            reason,
        })?;
        if offset % alignment != 0 {
            return Err(GgufError::Misaligned {
                path: path.into(),
                tensor: name.into(),
                offset,
                alignment,
            });
        }
        if tensor_index
            .insert(name.to_string(), tensors.len())
            .is_some()
        {
            return Err(GgufError::DuplicateTensor {
                path: path.into(),
                tensor: name.into(),
            });
        }
        tensors.push(TensorInfo {
            name: name.into(),
            shape,
            ty,
            offset,
            size,
        });
    }

    let data_offset = (cur.pos as u64)
        .div_ceil(alignment)
        .saturating_mul(alignment);
    let len = bytes.len() as u64;
    // A file without tensors (llama.cpp's vocabulary-only GGUFs) may end right after the header.
    let data_offset = if tensors.is_empty() {
        data_offset.min(len)
    } else {
        data_offset
    };
    if data_offset > len {
        return Err(GgufError::Truncated {
            path: path.into(),
            what: "padding before the data section".into(),
            offset: cur.pos as u64,
            needed: data_offset - cur.pos as u64,
            len,
        });
    }
    let data_len = len - data_offset;
    for t in &tensors {
        let end = t.offset.checked_add(t.size).filter(|&e| e <= data_len);
        if end.is_none() {
            return Err(GgufError::OutOfRange {
                path: path.into(),
                tensor: t.name.clone(),
                start: t.offset,
                end: t.offset.saturating_add(t.size),
                len: data_len,
            });
        }
    }
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&i| tensors[i].offset);
    for w in order.windows(2) {
        let (a, b) = (&tensors[w[0]], &tensors[w[1]]);
        if a.offset + a.size > b.offset && a.size > 0 && b.size > 0 {
            return Err(GgufError::Overlap {
                path: path.into(),
                first: a.name.clone(),
                second: b.name.clone(),
            });
        }
    }
    Ok(Header {
        version,
        alignment,
        data_offset,
        kvs,
        kv_index,
        tensors,
        tensor_index,
    })
}

/// Bytes of a tensor of `shape` and `ty`, or why the shape is unusable.
fn tensor_size(shape: &[u64], ty: GgmlType) -> Result<u64, String> {
    let ne0 = shape.first().copied().unwrap_or(1);
    if ne0 % ty.block_size() as u64 != 0 {
        return Err(format!(
            "the row length {ne0} is not a multiple of the block size {}",
            ty.block_size()
        ));
    }
    let mut n: u64 = 1;
    for &d in shape {
        n = n
            .checked_mul(d)
            .ok_or_else(|| "the element count overflows".to_string())?;
    }
    ty.bytes_for(n)
        .ok_or_else(|| "the byte size overflows".to_string())
}
