//! Model checkpoint parsing (safetensors header, metadata, config JSON, tensor set) from
//! arbitrary bytes: errors only, each naming the source; no allocation beyond what the bytes
//! hold, whatever model the config describes; and a checkpoint that parses is exactly its
//! config's tensor set, loads into f64 and (range permitting) f32 models, and round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tarflow::model::{checkpoint_bytes, parse_checkpoint, TarFlow};

fuzz_target!(|data: &[u8]| {
    let ck = match parse_checkpoint(data, "fuzz") {
        Ok(ck) => ck,
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains("fuzz"),
                "error does not name the source: {msg}"
            );
            return;
        }
    };
    assert!(ck.config.validate().is_ok());

    // The tensors are the config's, with its shapes, and every value is finite.
    let mut want: Vec<(String, Vec<usize>)> = ck.config.parameter_shapes().collect();
    want.sort();
    assert_eq!(want.len(), ck.config.num_tensors());
    assert_eq!(want.len(), ck.tensors.len());
    for ((wn, ws), (n, s, v)) in want.iter().zip(&ck.tensors) {
        assert_eq!((wn, ws), (n, s));
        assert_eq!(v.len(), s.iter().product::<usize>(), "{n}");
        assert!(v.iter().all(|x| x.is_finite()), "{n}");
    }

    // It loads into an f64 model unchanged.
    let m: TarFlow<f64> = ck.model().expect("a parsed checkpoint loads");
    for (name, t) in m.parameters() {
        let (_, _, v) = ck
            .tensors
            .iter()
            .find(|(n, _, _)| *n == name)
            .expect("loaded");
        assert_eq!(&t.to_f64_vec(), v, "{name}");
    }

    // Into f32 unless a value is beyond its range; then saved and read back bit for bit.
    let m32: TarFlow<f32> = match ck.model() {
        Ok(m) => m,
        Err(e) => {
            assert!(ck
                .tensors
                .iter()
                .any(|(_, _, v)| v.iter().any(|x| !(*x as f32).is_finite())));
            assert!(e.to_string().contains("out of the f32 range"), "{e}");
            return;
        }
    };
    let bytes = checkpoint_bytes(&m32, &[]).expect("serialises");
    let again = parse_checkpoint(&bytes, "again").expect("round trip parses");
    assert_eq!(again.config, ck.config);
    for ((n, s, v), (n2, s2, v2)) in ck.tensors.iter().zip(&again.tensors) {
        assert_eq!((n, s), (n2, s2));
        let v32: Vec<f64> = v.iter().map(|x| *x as f32 as f64).collect();
        assert_eq!(&v32, v2, "{n}");
    }
});
