//! `bpd.png`: a run's bits/dim against the training step, drawn with plotters.
//!
//! Two curves on one axis, each named in the legend for what it measures: the training loss
//! in bits/dim on the inputs the model is trained on (noise-augmented, or dequantised in a
//! likelihood run), averaged over each logged interval, and the model's bits/dim on
//! dequantised test images at each evaluation (drawn with markers: there are few of them).
//! The text uses DejaVu Sans, embedded (src/train/fonts), so that the figure looks the same on
//! every machine, with no system font or fontconfig involved.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use super::config::NoiseMode;
use crate::error::{Error, Result};
use crate::imageio::write_png;

/// DejaVu Sans cut down to the characters the plot draws (see src/train/fonts/LICENSE-DejaVu.txt).
const FONT: &[u8] = include_bytes!("fonts/DejaVuSans-subset.ttf");
/// The family name the figure asks plotters for; [`register`] maps it to [`FONT`].
const FAMILY: &str = "sans-serif";

/// Width and height of `bpd.png` in pixels.
pub const PLOT_SIZE: (u32, u32) = (900, 560);

const TRAIN_COLOR: RGBColor = RGBColor(31, 119, 180);
const TEST_COLOR: RGBColor = RGBColor(214, 39, 40);

/// The two curves of `bpd.png`, as (step, bits/dim) points in step order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BpdCurves {
    /// Training loss in bits/dim, one point per logged interval (`train_bpd` in
    /// metrics.jsonl).
    pub train: Vec<(f64, f64)>,
    /// Test bits/dim, one point per evaluation (`test_bpd` in metrics.jsonl).
    pub test: Vec<(f64, f64)>,
}

impl BpdCurves {
    /// The curves in the lines of a `metrics.jsonl`. Lines that are not JSON objects (a line
    /// cut short by a crash) and points that are not finite are left out.
    pub fn from_metrics(text: &str) -> Self {
        let mut c = BpdCurves::default();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let Some(step) = v["step"].as_f64() else {
                continue;
            };
            for (key, curve) in [("train_bpd", &mut c.train), ("test_bpd", &mut c.test)] {
                if let Some(b) = v[key].as_f64().filter(|b| b.is_finite()) {
                    curve.push((step, b));
                }
            }
        }
        c
    }
}

/// What the training curve measures, for its legend entry.
fn train_legend(noise: &NoiseMode) -> String {
    let inputs = match noise {
        NoiseMode::Gaussian { sigma } if *sigma > 0.0 => {
            format!("noise-augmented inputs (σ = {sigma})")
        }
        NoiseMode::Gaussian { .. } => "undequantised inputs".into(),
        NoiseMode::Dequantize => "dequantised inputs".into(),
    };
    format!("train: training loss in bits/dim (mean of each 10 steps), {inputs}")
}

/// Makes [`FONT`] the plot's font (once per process).
fn register() -> Result<()> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE.get_or_init(|| register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(Error::format(
            "the embedded plot font",
            "not a TrueType font plotters can read",
        ))
    }
}

/// The axis range that shows every value with a margin; a flat or empty series gets a
/// range around its value (or 0..1).
fn padded_range(values: impl Iterator<Item = f64>, margin: f64) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if lo > hi {
        return (0.0, 1.0);
    }
    let span = hi - lo;
    if span <= f64::EPSILON * hi.abs().max(1.0) {
        return (lo - 0.5, hi + 0.5);
    }
    (lo - margin * span, hi + margin * span)
}

/// Draws `curves` as an RGB image of `size` pixels (`3 * w * h` bytes, row-major).
pub fn render_bpd_plot(
    curves: &BpdCurves,
    noise: &NoiseMode,
    test_images: usize,
    size: (u32, u32),
) -> Result<Vec<u8>> {
    register()?;
    let (w, h) = size;
    if w < 200 || h < 150 {
        return Err(Error::arg(
            "render_bpd_plot",
            format!("a {w}x{h} plot is too small to read; at least 200x150"),
        ));
    }
    // A point that is not finite has no place on the axes (a skipped step's loss).
    let finite = |c: &[(f64, f64)]| -> Vec<(f64, f64)> {
        c.iter()
            .copied()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .collect()
    };
    let (train, test) = (finite(&curves.train), finite(&curves.test));
    let mut px = vec![255u8; w as usize * h as usize * 3];
    let fail = |e: &dyn std::fmt::Display| Error::format("bpd.png", e.to_string());
    {
        let root = BitMapBackend::with_buffer(&mut px, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(&e))?;
        let all = train.iter().chain(&test);
        let (x0, x1) = padded_range(all.clone().map(|p| p.0), 0.02);
        let (y0, y1) = padded_range(all.map(|p| p.1), 0.06);
        let mut chart = ChartBuilder::on(&root)
            .caption("bits/dim during training", (FAMILY, 24))
            .margin(14)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d(x0.max(0.0)..x1, y0..y1)
            .map_err(|e| fail(&e))?;
        chart
            .configure_mesh()
            .x_desc("training step")
            .y_desc("bits/dim")
            .axis_desc_style((FAMILY, 18))
            .label_style((FAMILY, 15))
            .max_light_lines(1)
            .light_line_style(RGBColor(240, 240, 240))
            .bold_line_style(RGBColor(215, 215, 215))
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v:.2}"))
            .draw()
            .map_err(|e| fail(&e))?;
        chart
            .draw_series(LineSeries::new(
                train.iter().copied(),
                TRAIN_COLOR.stroke_width(2),
            ))
            .map_err(|e| fail(&e))?
            .label(train_legend(noise))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], TRAIN_COLOR.stroke_width(2)));
        chart
            .draw_series(LineSeries::new(
                test.iter().copied(),
                TEST_COLOR.stroke_width(2),
            ))
            .map_err(|e| fail(&e))?
            .label(format!(
                "test: the model's bits/dim on {test_images} dequantised test images"
            ))
            .legend(|(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new([(0, 0), (20, 0)], TEST_COLOR.stroke_width(2))
                    + Circle::new((10, 0), 4, TEST_COLOR.filled())
            });
        // A marker on each evaluation: there are few of them, and one alone draws no line.
        chart
            .draw_series(test.iter().map(|&p| Circle::new(p, 4, TEST_COLOR.filled())))
            .map_err(|e| fail(&e))?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FAMILY, 15))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(160, 160, 160))
            .draw()
            .map_err(|e| fail(&e))?;
        root.present().map_err(|e| fail(&e))?;
    }
    Ok(px)
}

/// Draws `curves` into the PNG file `path` ([`PLOT_SIZE`]).
pub fn write_bpd_plot(
    path: &Path,
    curves: &BpdCurves,
    noise: &NoiseMode,
    test_images: usize,
) -> Result<()> {
    let px = render_bpd_plot(curves, noise, test_images, PLOT_SIZE)?;
    write_png(path, &px, PLOT_SIZE.0, PLOT_SIZE.1, 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_lines_give_the_two_curves_and_skip_what_is_not_a_point() {
        let text = "{\"step\":10,\"train_bpd\":3.5,\"lr\":0.1}\n\
                    {\"step\":10,\"test_bpd\":3.25}\n\
                    {\"step\":20,\"lr\":0.1}\n\
                    {\"step\":30,\"train_bpd\":2.5}\n\
                    {\"step\":40,\"train_bp";
        let c = BpdCurves::from_metrics(text);
        assert_eq!(c.train, [(10.0, 3.5), (30.0, 2.5)]);
        assert_eq!(c.test, [(10.0, 3.25)]);
    }

    #[test]
    fn ranges_hold_every_value_and_never_collapse() {
        let (lo, hi) = padded_range([2.0, 4.0, 3.0].into_iter(), 0.1);
        assert!(lo < 2.0 && hi > 4.0 && lo > 1.7 && hi < 4.3, "{lo} {hi}");
        let (lo, hi) = padded_range([5.0].into_iter(), 0.1);
        assert!(lo < 5.0 && hi > 5.0, "{lo} {hi}");
        assert_eq!(padded_range(std::iter::empty(), 0.1), (0.0, 1.0));
    }

    /// Pixels of exactly `c` in an RGB image.
    fn count(px: &[u8], c: RGBColor) -> usize {
        px.chunks_exact(3).filter(|p| *p == [c.0, c.1, c.2]).count()
    }

    #[test]
    fn both_curves_and_text_are_drawn() {
        let curves = BpdCurves {
            train: (1..=20)
                .map(|s| (s as f64 * 10.0, 4.0 - s as f64 * 0.1))
                .collect(),
            test: vec![(50.0, 3.4), (100.0, 3.0), (200.0, 2.4)],
        };
        let noise = NoiseMode::Gaussian { sigma: 0.05 };
        let px = render_bpd_plot(&curves, &noise, 1000, PLOT_SIZE).unwrap();
        assert_eq!(px.len(), (PLOT_SIZE.0 * PLOT_SIZE.1 * 3) as usize);
        // Each curve's colour is on the canvas (lines, the markers and the legend's keys).
        let (train, test) = (count(&px, TRAIN_COLOR), count(&px, TEST_COLOR));
        assert!(
            train > 500 && test > 200,
            "train {train} px, test {test} px"
        );
        // Text is antialiased: grey levels between black and white appear (the old bitmap
        // font drew pure black only).
        let grey = px
            .chunks_exact(3)
            .filter(|p| p[0] == p[1] && p[1] == p[2] && (40..200).contains(&p[0]))
            .count();
        assert!(grey > 200, "{grey} grey pixels");
        // Without a test point the plot is still drawn (an early run), and differs.
        let only_train = BpdCurves {
            test: Vec::new(),
            ..curves.clone()
        };
        let px2 = render_bpd_plot(&only_train, &noise, 1000, PLOT_SIZE).unwrap();
        assert!(count(&px2, TEST_COLOR) < test);
    }

    #[test]
    fn an_empty_run_and_a_tiny_size_are_handled() {
        let noise = NoiseMode::Dequantize;
        assert!(render_bpd_plot(&BpdCurves::default(), &noise, 10, PLOT_SIZE).is_ok());
        let nan = BpdCurves {
            train: vec![(0.0, f64::NAN), (10.0, 2.0), (20.0, f64::INFINITY)],
            test: vec![(10.0, 1.5)],
        };
        assert!(render_bpd_plot(&nan, &noise, 10, PLOT_SIZE).is_ok());
        let e = render_bpd_plot(&BpdCurves::default(), &noise, 10, (50, 50)).unwrap_err();
        assert!(e.to_string().contains("50x50"), "{e}");
    }

    #[test]
    fn legends_say_what_the_training_curve_measures() {
        assert!(train_legend(&NoiseMode::Gaussian { sigma: 0.05 }).contains("σ = 0.05"));
        assert!(train_legend(&NoiseMode::Dequantize).contains("dequantised"));
    }
}
