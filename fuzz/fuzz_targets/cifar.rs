//! CIFAR-10 batch parsing from arbitrary bytes: errors only, and a parsed batch satisfies the
//! data set invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tarflow::data::parse_cifar_batch;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = parse_cifar_batch(data, "fuzz") {
        assert!(d.validate("fuzz").is_ok());
        assert_eq!(d.len() * 3073, data.len());
    }
});
