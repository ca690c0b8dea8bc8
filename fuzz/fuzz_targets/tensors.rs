//! The safetensors reader behind `tarflow encode` / `decode` inputs, from arbitrary bytes,
//! read as f32 and as f64 (every stored dtype: F16, BF16, F32, F64, I64, I32, U8, and the
//! unsupported ones): errors only, each naming the source; both element types accept and
//! refuse the same files; what parses has consistent shapes, the f32 reading is the f64
//! reading rounded, and the f64 tensors round-trip through the writer bit for bit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tarflow::tensorio::{parse_tensors_with_metadata, tensors_to_bytes};
use tarflow::{DType, Tensor};

fuzz_target!(|data: &[u8]| {
    let r64 = parse_tensors_with_metadata::<f64>(data, "fuzz");
    let r32 = parse_tensors_with_metadata::<f32>(data, "fuzz");
    let (t64, meta, t32, meta32) = match (r64, r32) {
        (Ok((t64, m64)), Ok((t32, m32))) => (t64, m64, t32, m32),
        (Err(a), Err(b)) => {
            for e in [a, b] {
                let msg = e.to_string();
                assert!(
                    msg.contains("fuzz"),
                    "error does not name the source: {msg}"
                );
            }
            return;
        }
        (a, b) => panic!(
            "f64 and f32 readers disagree: f64 ok={}, f32 ok={}",
            a.is_ok(),
            b.is_ok()
        ),
    };
    assert_eq!(meta, meta32);
    assert_eq!(t64.len(), t32.len());
    for (name, a) in &t64 {
        let b = t32.get(name).expect("same names in both readings");
        assert_eq!(a.shape(), b.shape(), "{name}");
        assert_eq!(a.numel(), a.shape().iter().product::<usize>(), "{name}");
        let (va, vb) = (a.to_vec(), b.to_vec());
        assert_eq!(va.len(), a.numel(), "{name}");
        for (x, y) in va.iter().zip(&vb) {
            assert_eq!(
                (*x as f32).to_bits(),
                y.to_bits(),
                "{name}: {x} read as f32 {y}"
            );
        }
    }

    // Written back as F64 and read again: same names, shapes and bits. Not for a file of
    // no tensors: safetensors 0.4.5 serialises an empty tensor list with a metadata map as
    // `{},"__metadata__":{}}`, which the writer then refuses (an error, not a panic, and no
    // caller writes a file without tensors).
    if t64.is_empty() {
        return;
    }
    let mut named: Vec<(&str, &Tensor<f64>)> = t64.iter().map(|(n, t)| (n.as_str(), t)).collect();
    named.sort_by_key(|(n, _)| *n);
    let bytes = match tensors_to_bytes(&named, DType::F64, Some(meta)) {
        Ok(b) => b,
        // The reader accepts the reserved name only as the metadata key, so any name it
        // returned must be writable.
        Err(e) => panic!("parsed tensors do not serialise: {e}"),
    };
    let (again, _) = parse_tensors_with_metadata::<f64>(&bytes, "again").expect("round trip");
    assert_eq!(again.len(), t64.len());
    for (name, a) in &t64 {
        let b = again.get(name).expect("round trip keeps names");
        assert_eq!(a.shape(), b.shape(), "{name}");
        let bits = |t: &Tensor<f64>| t.to_vec().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(a), bits(b), "{name}");
    }
});
