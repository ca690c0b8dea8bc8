//! One image file through the folder loader's decode, colour conversion, resize and crop.
//! The first byte picks the target, so grayscale/RGB and odd sizes are all exercised.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tarflow::data::decode_image;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, bytes)) = data.split_first() else {
        return;
    };
    let channels = if sel & 1 == 0 { 1 } else { 3 };
    let height = 1 + (sel as usize >> 1 & 7) * 5;
    let width = 1 + (sel as usize >> 4) * 3;
    if let Ok(px) = decode_image(bytes, "fuzz", channels, height, width) {
        assert_eq!(px.len(), channels * height * width);
    }
});
