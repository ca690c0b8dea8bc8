//! IDX image and label parsing (gzip or raw) from arbitrary bytes: errors only, and whatever
//! parses is self-consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tarflow::data::{parse_idx_images, parse_idx_labels};

fuzz_target!(|data: &[u8]| {
    if let Ok(im) = parse_idx_images(data, "fuzz") {
        assert_eq!(im.pixels.len(), im.count * im.rows * im.cols);
    }
    let _ = parse_idx_labels(data, "fuzz");
});
