//! Writer -> reader round trip: every value type (nested arrays included), alignment, tensor views.

use anatomy_runtime::gguf::{GgufFile, GgufWriter, OwnedValue, PendingTensor, Value, ValueType};
use anatomy_runtime::quant::quantize::quantize_to_vec;
use anatomy_runtime::quant::GgmlType;

#[test]
fn values_and_tensors_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.gguf");
    let nested = OwnedValue::Array(
        ValueType::Array,
        vec![OwnedValue::i32s([1, -2]), OwnedValue::i32s([])],
    );
    let meta: Vec<(String, OwnedValue)> = vec![
        ("u8".into(), OwnedValue::U8(200)),
        ("i8".into(), OwnedValue::I8(-5)),
        ("u16".into(), OwnedValue::U16(60000)),
        ("i16".into(), OwnedValue::I16(-300)),
        ("u32".into(), OwnedValue::U32(1 << 31)),
        ("i32".into(), OwnedValue::I32(-7)),
        ("f32".into(), OwnedValue::F32(0.5)),
        ("bool".into(), OwnedValue::Bool(true)),
        ("str".into(), OwnedValue::String("héllo".into())),
        ("u64".into(), OwnedValue::U64(u64::MAX)),
        ("i64".into(), OwnedValue::I64(i64::MIN)),
        ("f64".into(), OwnedValue::F64(-2.25)),
        ("strs".into(), OwnedValue::strings(["a", "", "ccc"])),
        ("nested".into(), nested),
    ];
    let x: Vec<f32> = (0..512).map(|i| (i as f32 * 0.37).sin()).collect();
    let q = quantize_to_vec(GgmlType::Q4_K, &x).unwrap();
    let f = quantize_to_vec(GgmlType::F32, &x[..6]).unwrap();
    let tensors = vec![
        PendingTensor {
            name: "q".into(),
            shape: vec![256, 2],
            ty: GgmlType::Q4_K,
        },
        PendingTensor {
            name: "f".into(),
            shape: vec![3, 2],
            ty: GgmlType::F32,
        },
    ];
    for alignment in [32u64, 64] {
        let mut w = GgufWriter::create(&path, &meta, tensors.clone(), alignment).unwrap();
        w.write_tensor("q", &q).unwrap();
        w.write_tensor("f", &f).unwrap();
        w.finish().unwrap();
        assert!(!dir.path().join("t.gguf.tmp").exists());

        let g = GgufFile::open(&path).unwrap();
        assert_eq!(g.version(), 3);
        assert_eq!(g.alignment(), alignment);
        assert_eq!(g.data_offset() % alignment, 0);
        assert_eq!(g.get("u8"), Some(Value::U8(200)));
        assert_eq!(g.get("i8"), Some(Value::I8(-5)));
        assert_eq!(g.get("u16"), Some(Value::U16(60000)));
        assert_eq!(g.get("i16"), Some(Value::I16(-300)));
        assert_eq!(g.get("u32"), Some(Value::U32(1 << 31)));
        assert_eq!(g.get("i32"), Some(Value::I32(-7)));
        assert_eq!(g.get("f32"), Some(Value::F32(0.5)));
        assert_eq!(g.get("bool"), Some(Value::Bool(true)));
        assert_eq!(g.get("str"), Some(Value::String("héllo")));
        assert_eq!(g.get("u64"), Some(Value::U64(u64::MAX)));
        assert_eq!(g.get("i64"), Some(Value::I64(i64::MIN)));
        assert_eq!(g.get("f64"), Some(Value::F64(-2.25)));
        let strs: Vec<&str> = g
            .get("strs")
            .unwrap()
            .as_array()
            .unwrap()
            .strings()
            .unwrap()
            .collect();
        assert_eq!(strs, ["a", "", "ccc"]);
        let nested: Vec<Option<Vec<i64>>> = g
            .get("nested")
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_array().unwrap().ints())
            .collect();
        assert_eq!(nested, [Some(vec![1, -2]), Some(vec![])]);
        let t = g.tensor("q").unwrap();
        assert_eq!((t.ty(), t.shape()), (GgmlType::Q4_K, &[256u64, 2][..]));
        assert_eq!(t.data, &q[..]);
        assert_eq!(t.rows().count(), 2);
        // Zero-copy: the view points into the map, not into a copy.
        assert_eq!(g.tensor("f").unwrap().as_f32().unwrap(), &x[..6]);
        let names: Vec<&str> = g.tensors().map(|t| t.name()).collect();
        assert_eq!(names, ["q", "f"]);
    }
}

#[test]
fn writer_refuses_wrong_order_size_and_unfinished_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.gguf");
    let tensors = vec![PendingTensor {
        name: "a".into(),
        shape: vec![4],
        ty: GgmlType::F32,
    }];
    let mut w = GgufWriter::create(&path, &[], tensors.clone(), 32).unwrap();
    assert!(w.write_tensor("b", &[0; 16]).is_err());
    assert!(w.write_tensor("a", &[0; 12]).is_err());
    drop(w);
    assert!(!path.exists() && !dir.path().join("w.gguf.tmp").exists());
    let w = GgufWriter::create(&path, &[], tensors, 32).unwrap();
    assert!(w.finish().is_err());
    let bad = vec![PendingTensor {
        name: "q".into(),
        shape: vec![100],
        ty: GgmlType::Q4_K,
    }];
    assert!(GgufWriter::create(&path, &[], bad, 32).is_err());
}

/// `Residence::Copied` (`--no-mmap`) reads the same bytes the map shows, header and tensors, and
/// gives the malformed-file errors the mapped open gives: a truncated file, an empty one, and a
/// missing one each name the path.
#[test]
fn copied_files_read_what_mapped_files_show() {
    use anatomy_runtime::gguf::{GgufError, Residence};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.gguf");
    let x: Vec<f32> = (0..1024).map(|i| (i as f32 * 0.11).cos()).collect();
    let q = quantize_to_vec(GgmlType::Q6_K, &x).unwrap();
    let meta = vec![("s".to_string(), OwnedValue::String("kept".into()))];
    let tensors = vec![PendingTensor {
        name: "q".into(),
        shape: vec![512, 2],
        ty: GgmlType::Q6_K,
    }];
    let mut w = GgufWriter::create(&path, &meta, tensors, 32).unwrap();
    w.write_tensor("q", &q).unwrap();
    w.finish().unwrap();

    let mapped = GgufFile::open(&path).unwrap();
    let copied = GgufFile::open_with(&path, Residence::Copied).unwrap();
    assert_eq!(copied.get("s"), Some(Value::String("kept")));
    assert_eq!(copied.file_size(), mapped.file_size());
    let (a, b) = (mapped.tensor("q").unwrap(), copied.tensor("q").unwrap());
    assert_eq!(b.data, &q[..]);
    assert_eq!(a.data, b.data);
    assert_ne!(
        a.data.as_ptr(),
        b.data.as_ptr(),
        "the copy has memory of its own"
    );

    let bytes = std::fs::read(&path).unwrap();
    for (name, len) in [("short.gguf", bytes.len() - 100), ("empty.gguf", 0)] {
        let p = dir.path().join(name);
        std::fs::write(&p, &bytes[..len]).unwrap();
        let mapped = GgufFile::open(&p).err().unwrap().to_string();
        let copied = GgufFile::open_with(&p, Residence::Copied).err().unwrap();
        assert_eq!(copied.to_string(), mapped, "{name}");
        assert!(mapped.contains(name), "{mapped}");
    }
    let missing = dir.path().join("missing.gguf");
    let err = GgufFile::open_with(&missing, Residence::Copied)
        .err()
        .unwrap();
    assert!(matches!(err, GgufError::Io { .. }), "{err}");
    assert!(err.to_string().contains("missing.gguf"), "{err}");
}
