//! Image output: PNG or JPEG files, image grids (samples, data previews) with optional
//! upscaling and row labels (a 3x5 pixel font of digits and capitals). The training plot
//! (`bpd.png`) is drawn with plotters in `train::plot`.
//!
//! Files are written atomically ([`atomic_write`]): a reader (or a crash) never sees half a
//! file.

use std::path::Path;

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder};

use crate::error::{Error, Result};
use crate::fsutil::atomic_write;
use crate::tensor::layout::checked_product;

/// Gray level of the padding between grid cells: visible against both black backgrounds
/// (MNIST) and bright photographs.
pub const GRID_PAD_VALUE: u8 = 128;

/// Largest grid buffer [`make_grid`] builds (1 GiB).
pub const MAX_GRID_BYTES: usize = 1 << 30;

/// Maps values in `[-1, 1]` to bytes: `p = round((x + 1) * 255 / 2)`, clipped to `0..=255`
/// (NaN gives 0). Inverts [`crate::data::loader::to_signed_unit`] exactly.
pub fn f32_to_u8_images(xs: &[f32]) -> Vec<u8> {
    xs.iter()
        .map(|&x| {
            if x.is_nan() {
                0
            } else {
                ((f64::from(x) + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8
            }
        })
        .collect()
}

/// JPEG quality of [`write_image`]: high enough that 8-bit samples show no visible blocks.
pub const JPEG_QUALITY: u8 = 95;

/// The file formats the image writers produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageKind {
    /// Lossless PNG (`.png`).
    Png,
    /// Lossy JPEG at [`JPEG_QUALITY`] (`.jpg`, `.jpeg`).
    Jpeg,
}

impl ImageKind {
    /// The format a file name asks for, from its extension (any case). Anything else is an
    /// error naming the file, so that a request for `x.gif` never gets PNG bytes under that
    /// name.
    pub fn from_path(path: &Path) -> Result<ImageKind> {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        match ext.as_deref() {
            Some("png") => Ok(ImageKind::Png),
            Some("jpg" | "jpeg") => Ok(ImageKind::Jpeg),
            other => Err(Error::arg(
                "write_image",
                format!(
                    "{}: {} (images are written as .png, .jpg or .jpeg)",
                    path.display(),
                    match other {
                        Some(e) => format!("unsupported image extension .{e}"),
                        None => "no extension to choose the image format by".into(),
                    }
                ),
            )),
        }
    }
}

/// The colour type of interleaved 8-bit pixels with `channels` 1 (gray) or 3 (RGB), after
/// checking that `pixels` holds exactly one `width x height` image.
fn color_of(
    op: &'static str,
    pixels: &[u8],
    width: u32,
    height: u32,
    channels: usize,
) -> Result<ExtendedColorType> {
    let color = match channels {
        1 => ExtendedColorType::L8,
        3 => ExtendedColorType::Rgb8,
        c => return Err(Error::arg(op, format!("channels must be 1 or 3, got {c}"))),
    };
    let expected = checked_product([width as usize, height as usize, channels]);
    if expected != Some(pixels.len()) || width == 0 || height == 0 {
        return Err(Error::arg(
            op,
            format!(
                "{} bytes for a {width}x{height} image with {channels} channels",
                pixels.len()
            ),
        ));
    }
    Ok(color)
}

/// Encodes interleaved 8-bit pixels (`channels` 1 = gray, 3 = RGB) as a PNG or JPEG file in
/// memory.
pub fn encode_image(
    pixels: &[u8],
    width: u32,
    height: u32,
    channels: usize,
    kind: ImageKind,
) -> Result<Vec<u8>> {
    let color = color_of("encode_image", pixels, width, height, channels)?;
    let mut out = Vec::new();
    let r = match kind {
        ImageKind::Png => PngEncoder::new(&mut out).write_image(pixels, width, height, color),
        ImageKind::Jpeg => JpegEncoder::new_with_quality(&mut out, JPEG_QUALITY)
            .write_image(pixels, width, height, color),
    };
    r.map_err(|e| Error::arg("encode_image", format!("{kind:?} encoding failed: {e}")))?;
    Ok(out)
}

/// Encodes interleaved 8-bit pixels (`channels` 1 = gray, 3 = RGB) as PNG into `path`,
/// whatever its name (see [`write_image`] for the format chosen by the name).
pub fn write_png(
    path: impl AsRef<Path>,
    pixels: &[u8],
    width: u32,
    height: u32,
    channels: usize,
) -> Result<()> {
    write_as(
        "write_png",
        path.as_ref(),
        pixels,
        width,
        height,
        channels,
        ImageKind::Png,
    )
}

/// Writes interleaved 8-bit pixels to `path` as PNG or JPEG, as its extension says
/// ([`ImageKind::from_path`]); any other extension is an error and nothing is written.
pub fn write_image(
    path: impl AsRef<Path>,
    pixels: &[u8],
    width: u32,
    height: u32,
    channels: usize,
) -> Result<()> {
    let path = path.as_ref();
    let kind = ImageKind::from_path(path)?;
    write_as("write_image", path, pixels, width, height, channels, kind)
}

fn write_as(
    op: &'static str,
    path: &Path,
    pixels: &[u8],
    width: u32,
    height: u32,
    channels: usize,
    kind: ImageKind,
) -> Result<()> {
    color_of(op, pixels, width, height, channels)?;
    let bytes = encode_image(pixels, width, height, channels, kind)
        .map_err(|e| Error::format(path.display().to_string(), e.to_string()))?;
    atomic_write(path, &bytes)
}

/// Lays out `n` channel-major images (`channels x height x width` bytes each) in a grid of
/// `cols` columns with `pad` pixels of [`GRID_PAD_VALUE`] around every cell. Returns the
/// interleaved pixels and the grid's width and height.
pub fn make_grid(
    images: &[u8],
    n: usize,
    channels: usize,
    height: usize,
    width: usize,
    cols: usize,
    pad: usize,
) -> Result<(Vec<u8>, usize, usize)> {
    let op = "make_grid";
    if channels != 1 && channels != 3 {
        return Err(Error::arg(
            op,
            format!("channels must be 1 or 3, got {channels}"),
        ));
    }
    if n == 0 || cols == 0 || height == 0 || width == 0 {
        return Err(Error::arg(
            op,
            format!("n={n}, cols={cols}, height={height}, width={width} must all be positive"),
        ));
    }
    let per = checked_product([height, width, channels]);
    if per.and_then(|p| n.checked_mul(p)) != Some(images.len()) {
        return Err(Error::arg(
            op,
            format!(
                "{} bytes is not {n} images of {channels}x{height}x{width}",
                images.len()
            ),
        ));
    }
    let per = per.unwrap_or(0);
    let cols = cols.min(n);
    let rows = n.div_ceil(cols);
    // Checked: a mistaken `pad` must give an error, not an overflow or an absurd buffer.
    let side = |k: usize, len: usize| {
        k.checked_mul(len)?
            .checked_add(k.checked_add(1)?.checked_mul(pad)?)
    };
    let (gw, gh) = match (side(cols, width), side(rows, height)) {
        (Some(gw), Some(gh))
            if gw <= i32::MAX as usize
                && gh <= i32::MAX as usize
                && gw.saturating_mul(gh) <= MAX_GRID_BYTES / channels =>
        {
            (gw, gh)
        }
        _ => {
            return Err(Error::arg(
                op,
                format!(
                "a grid of {rows}x{cols} cells of {height}x{width} with padding {pad} is too large"
            ),
            ))
        }
    };
    let mut out = vec![GRID_PAD_VALUE; gw * gh * channels];
    let plane = height * width;
    for (k, img) in images.chunks_exact(per).enumerate() {
        let x0 = pad + (k % cols) * (width + pad);
        let y0 = pad + (k / cols) * (height + pad);
        for y in 0..height {
            let row = ((y0 + y) * gw + x0) * channels;
            for x in 0..width {
                for c in 0..channels {
                    out[row + x * channels + c] = img[c * plane + y * width + x];
                }
            }
        }
    }
    Ok((out, gw, gh))
}

/// Writes `n` channel-major images as one PNG grid (gray for 1 channel, RGB for 3); see
/// [`make_grid`] for the layout.
#[allow(clippy::too_many_arguments)]
pub fn write_png_grid(
    path: impl AsRef<Path>,
    images: &[u8],
    n: usize,
    channels: usize,
    height: usize,
    width: usize,
    cols: usize,
    pad: usize,
) -> Result<()> {
    let (pixels, gw, gh) = make_grid(images, n, channels, height, width, cols, pad)?;
    write_png(path, &pixels, gw as u32, gh as u32, channels)
}

/// Largest upscale factor of [`GridStyle::scale`].
pub const MAX_GRID_SCALE: usize = 16;

/// How [`make_styled_grid`] lays out a grid beyond [`make_grid`]'s columns and padding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GridStyle {
    /// Columns of the grid (at most the number of images are used).
    pub cols: usize,
    /// Pixels of [`GRID_PAD_VALUE`] around every cell, after upscaling.
    pub pad: usize,
    /// Integer upscale factor of every image (nearest neighbour, so pixels stay sharp),
    /// `1..=`[`MAX_GRID_SCALE`]; 1 keeps the images as they are.
    pub scale: usize,
    /// Text written left of each row (its class, say), one per row; empty for no margin.
    /// Digits, letters and `.,-+/:_()=%` have glyphs; other characters are left blank.
    pub row_labels: Vec<String>,
}

impl GridStyle {
    /// `cols` columns, padding `pad`, no upscaling and no labels.
    pub fn new(cols: usize, pad: usize) -> Self {
        GridStyle {
            cols,
            pad,
            scale: 1,
            row_labels: Vec::new(),
        }
    }
}

/// Repeats every pixel of `n` channel-major `channels x height x width` images `scale` times
/// in both directions.
pub fn upscale(
    images: &[u8],
    n: usize,
    channels: usize,
    height: usize,
    width: usize,
    scale: usize,
) -> Result<Vec<u8>> {
    let op = "upscale";
    if !(1..=MAX_GRID_SCALE).contains(&scale) {
        return Err(Error::arg(
            op,
            format!("scale {scale} must be in 1..={MAX_GRID_SCALE}"),
        ));
    }
    let planes = checked_product([n, channels]);
    let size = checked_product([n, channels, height, width]);
    let out_size = checked_product([n, channels, height, width, scale, scale]);
    match (planes, size, out_size) {
        (Some(_), Some(sz), Some(out)) if sz == images.len() && out <= MAX_GRID_BYTES => {}
        _ => {
            return Err(Error::arg(
                op,
                format!(
                    "{} bytes of {n} images of {channels}x{height}x{width} at scale {scale}: \
                     the sizes do not match or the result would exceed {MAX_GRID_BYTES} bytes",
                    images.len()
                ),
            ))
        }
    }
    if scale == 1 {
        return Ok(images.to_vec());
    }
    let ow = width * scale;
    let mut out = Vec::with_capacity(images.len() * scale * scale);
    for row in images.chunks_exact(width.max(1)) {
        let wide: Vec<u8> = row
            .iter()
            .flat_map(|&p| std::iter::repeat_n(p, scale))
            .collect();
        debug_assert_eq!(wide.len(), ow);
        for _ in 0..scale {
            out.extend_from_slice(&wide);
        }
    }
    Ok(out)
}

/// [`make_grid`] with the images upscaled and the rows labelled as `style` says. Returns the
/// interleaved pixels and the grid's width and height; the label margin (when there are
/// labels) is on the left, in [`GRID_PAD_VALUE`], with the text in black.
pub fn make_styled_grid(
    images: &[u8],
    n: usize,
    channels: usize,
    height: usize,
    width: usize,
    style: &GridStyle,
) -> Result<(Vec<u8>, usize, usize)> {
    let big = upscale(images, n, channels, height, width, style.scale)?;
    let (h, w) = (height * style.scale, width * style.scale);
    let (grid, gw, gh) = make_grid(&big, n, channels, h, w, style.cols, style.pad)?;
    if style.row_labels.is_empty() {
        return Ok((grid, gw, gh));
    }
    let rows = n.div_ceil(style.cols.clamp(1, n));
    if style.row_labels.len() != rows {
        return Err(Error::arg(
            "make_styled_grid",
            format!(
                "{} row labels for a grid of {rows} rows",
                style.row_labels.len()
            ),
        ));
    }
    // Glyphs scale with the cells so that a label stays about a third of a row tall.
    let fs = (h / 14).clamp(1, 8);
    let chars = style
        .row_labels
        .iter()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(0);
    let margin = chars * 4 * fs + 2 * fs + style.pad;
    let ow = gw + margin;
    if ow.saturating_mul(gh).saturating_mul(channels) > MAX_GRID_BYTES {
        return Err(Error::arg(
            "make_styled_grid",
            format!("a labelled grid of {ow}x{gh} pixels is too large"),
        ));
    }
    let mut out = vec![GRID_PAD_VALUE; ow * gh * channels];
    for y in 0..gh {
        let src = &grid[y * gw * channels..(y + 1) * gw * channels];
        out[(y * ow + margin) * channels..(y + 1) * ow * channels].copy_from_slice(src);
    }
    for (k, label) in style.row_labels.iter().enumerate() {
        let y0 = style.pad + k * (h + style.pad) + h.saturating_sub(5 * fs) / 2;
        let x0 = 2 * fs;
        for (i, ch) in label.chars().enumerate() {
            let Some(g) = glyph(ch) else { continue };
            for bit in 0..15 {
                if (g >> (14 - bit)) & 1 == 0 {
                    continue;
                }
                let (gx, gy) = (x0 + (i * 4 + bit % 3) * fs, y0 + (bit / 3) * fs);
                for y in gy..(gy + fs).min(gh) {
                    let at = (y * ow + gx) * channels;
                    out[at..at + fs * channels].fill(0);
                }
            }
        }
    }
    Ok((out, ow, gh))
}

/// Writes `n` channel-major images as one grid image laid out as `style` says, as PNG or
/// JPEG by the extension of `path` (see [`write_image`]).
pub fn write_grid(
    path: impl AsRef<Path>,
    images: &[u8],
    n: usize,
    channels: usize,
    height: usize,
    width: usize,
    style: &GridStyle,
) -> Result<()> {
    let path = path.as_ref();
    // The format first: a bad name is refused before any pixel work.
    ImageKind::from_path(path)?;
    let (pixels, gw, gh) = make_styled_grid(images, n, channels, height, width, style)?;
    write_image(path, &pixels, gw as u32, gh as u32, channels)
}

// ---------------------------------------------------------------------------------------
// Row labels.

/// 3x5 glyphs as 15 bits, read row by row from the top, most significant bit first (the top
/// left pixel). Lower-case letters are drawn as upper case; characters without a glyph are
/// left blank.
fn glyph(c: char) -> Option<u16> {
    Some(match c.to_ascii_uppercase() {
        '0' => 0b111101101101111,
        '1' => 0b010110010010111,
        '2' => 0b111001111100111,
        '3' => 0b111001111001111,
        '4' => 0b101101111001001,
        '5' => 0b111100111001111,
        '6' => 0b111100111101111,
        '7' => 0b111001010010010,
        '8' => 0b111101111101111,
        '9' => 0b111101111001111,
        'A' => 0b010101111101101,
        'B' => 0b110101110101110,
        'C' => 0b011100100100011,
        'D' => 0b110101101101110,
        'E' => 0b111100110100111,
        'F' => 0b111100110100100,
        'G' => 0b011100101101011,
        'H' => 0b101101111101101,
        'I' => 0b111010010010111,
        'J' => 0b001001001101010,
        'K' => 0b101101110101101,
        'L' => 0b100100100100111,
        'M' => 0b101111111101101,
        'N' => 0b110101101101101,
        'O' => 0b010101101101010,
        'P' => 0b110101110100100,
        'Q' => 0b010101101110011,
        'R' => 0b110101110101101,
        'S' => 0b011100010001110,
        'T' => 0b111010010010010,
        'U' => 0b101101101101111,
        'V' => 0b101101101101010,
        'W' => 0b101101111111101,
        'X' => 0b101101010101101,
        'Y' => 0b101101010010010,
        'Z' => 0b111001010100111,
        '.' => 0b000000000000010,
        ',' => 0b000000000010100,
        '-' => 0b000000111000000,
        '+' => 0b000010111010000,
        '/' => 0b001001010100100,
        ':' => 0b000010000010000,
        '_' => 0b000000000000111,
        '(' => 0b001010010010001,
        ')' => 0b100010010010100,
        '=' => 0b000111000111000,
        '%' => 0b101001010100101,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_kind_follows_the_extension_in_any_case() {
        for (name, kind) in [
            ("a.png", ImageKind::Png),
            ("dir.v2/B.PNG", ImageKind::Png),
            ("c.jpg", ImageKind::Jpeg),
            ("d.JPEG", ImageKind::Jpeg),
        ] {
            assert_eq!(
                ImageKind::from_path(Path::new(name)).unwrap(),
                kind,
                "{name}"
            );
        }
        for name in ["e.gif", "f", "g.png.tmp", ".jpg"] {
            let e = ImageKind::from_path(Path::new(name))
                .unwrap_err()
                .to_string();
            assert!(e.contains(name) && e.contains(".png, .jpg or .jpeg"), "{e}");
        }
    }

    #[test]
    fn jpeg_and_png_encodings_decode_to_the_pixels() {
        // A smooth RGB gradient: JPEG at quality 95 keeps it within a few levels.
        let (w, h) = (16u32, 8u32);
        let px: Vec<u8> = (0..w * h * 3).map(|i| ((i * 5) % 256) as u8 / 2).collect();
        let png = encode_image(&px, w, h, 3, ImageKind::Png).unwrap();
        let back = image::load_from_memory(&png).unwrap().to_rgb8().into_raw();
        assert_eq!(back, px);
        let jpg = encode_image(&px, w, h, 3, ImageKind::Jpeg).unwrap();
        assert_eq!(&jpg[..3], &[0xFF, 0xD8, 0xFF]);
        let img = image::load_from_memory(&jpg).unwrap();
        assert_eq!((img.width(), img.height()), (w, h));
        let gray = encode_image(&[7; 6], 3, 2, 1, ImageKind::Jpeg).unwrap();
        let g = image::load_from_memory(&gray)
            .unwrap()
            .to_luma8()
            .into_raw();
        assert!(g.iter().all(|&v| v.abs_diff(7) <= 1), "{g:?}");
        assert!(encode_image(&px, w, h, 2, ImageKind::Jpeg).is_err());
        assert!(encode_image(&px[1..], w, h, 3, ImageKind::Png).is_err());
    }

    #[test]
    fn upscale_repeats_every_pixel_in_both_directions() {
        // Two 1x2x2 images.
        let imgs = [1, 2, 3, 4, 5, 6, 7, 8];
        let big = upscale(&imgs, 2, 1, 2, 2, 2).unwrap();
        #[rustfmt::skip]
        let want = [
            1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4, 3, 3, 4, 4,
            5, 5, 6, 6, 5, 5, 6, 6, 7, 7, 8, 8, 7, 7, 8, 8,
        ];
        assert_eq!(big, want);
        assert_eq!(upscale(&imgs, 2, 1, 2, 2, 1).unwrap(), imgs);
        assert!(upscale(&imgs, 2, 1, 2, 2, 0).is_err());
        assert!(upscale(&imgs, 2, 1, 2, 2, MAX_GRID_SCALE + 1).is_err());
        assert!(upscale(&imgs, 3, 1, 2, 2, 2).is_err());
    }

    #[test]
    fn row_labels_sit_in_a_left_margin_beside_their_rows() {
        // Four 1x14x14 white images, two per row: fs = 1, one glyph per label.
        let (n, side) = (4, 14);
        let imgs = vec![255u8; n * side * side];
        let mut style = GridStyle::new(2, 1);
        let (plain, pw, ph) = make_styled_grid(&imgs, n, 1, side, side, &style).unwrap();
        style.row_labels = vec!["7".into(), String::new()];
        let (grid, gw, gh) = make_styled_grid(&imgs, n, 1, side, side, &style).unwrap();
        let margin = gw - pw;
        assert_eq!((margin, gh), (4 + 2 + 1, ph));
        for y in 0..gh {
            assert_eq!(
                &grid[y * gw + margin..(y + 1) * gw],
                &plain[y * pw..(y + 1) * pw]
            );
        }
        let ink = |rows: std::ops::Range<usize>| {
            rows.flat_map(|y| (0..margin).map(move |x| (x, y)))
                .filter(|&(x, y)| grid[y * gw + x] == 0)
                .count()
        };
        // "7" is 7 pixels of its 3x5 glyph; the second row has no label.
        assert_eq!(ink(0..1 + side), 7);
        assert_eq!(ink(1 + side..gh), 0);
        style.row_labels.pop();
        assert!(make_styled_grid(&imgs, n, 1, side, side, &style).is_err());
    }

    #[test]
    fn every_glyph_character_has_ink() {
        for c in "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ.,-+/:_()=%".chars() {
            let g = glyph(c).unwrap();
            assert!(g != 0 && g < 1 << 15, "{c}");
        }
        assert_eq!(glyph('a'), glyph('A'));
        assert_eq!(glyph('#'), None);
    }
}
