//! The loss curve as a PNG: every iteration's loss (light) and its moving average (dark),
//! with tick labels drawn in a built-in 3x5 pixel font, so no font files are needed.

use std::path::Path;

use image::{Rgb, RgbImage};

use crate::Error;

const WIDTH: u32 = 720;
const HEIGHT: u32 = 360;
/// Left, right, top and bottom margins.
const MARGIN: (u32, u32, u32, u32) = (64, 16, 28, 32);
/// Glyphs are drawn this many pixels per font pixel.
const FONT_SCALE: u32 = 2;

/// Read `step` and `loss` from a metrics log and draw `out`.
///
/// # Errors
/// One line for an unreadable log, a log with no losses, or a PNG that cannot be written.
pub fn loss_curve_png(metrics: &Path, out: &Path) -> Result<(), Error> {
    // A billion bytes is some six million steps of log.
    let text = nn::files::read_text_bounded(metrics, 1 << 30).map_err(Error::io(metrics))?;
    let points: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            Some((v.get("step")?.as_f64()?, v.get("loss")?.as_f64()?))
        })
        .filter(|(_, loss)| loss.is_finite())
        .collect();
    if points.is_empty() {
        return Err(Error::Setup(format!(
            "{}: no losses to plot",
            metrics.display()
        )));
    }
    loss_curve(&points).save(out).map_err(Error::image(out))
}

/// The picture for `(step, loss)` points.
pub fn loss_curve(points: &[(f64, f64)]) -> RgbImage {
    let mut img = RgbImage::from_pixel(WIDTH, HEIGHT, Rgb([255, 255, 255]));
    let (left, right, top, bottom) = MARGIN;
    let (x0, x1) = (left as f64, (WIDTH - right) as f64);
    let (y0, y1) = ((HEIGHT - bottom) as f64, top as f64);
    let max_step = points.iter().map(|p| p.0).fold(1.0, f64::max);
    let lo = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let hi = points.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let pad = ((hi - lo) * 0.05).max(1e-6);
    let (lo, hi) = (lo - pad, hi + pad);
    let at = |(s, l): (f64, f64)| {
        (
            x0 + (x1 - x0) * s / max_step,
            y0 + (y1 - y0) * (l - lo) / (hi - lo),
        )
    };
    let grid = Rgb([225, 225, 225]);
    let ink = Rgb([60, 60, 60]);
    for k in 0..=4 {
        let loss = lo + (hi - lo) * k as f64 / 4.0;
        let y = at((0.0, loss)).1;
        line(&mut img, (x0, y), (x1, y), grid);
        let label = format!("{loss:.3}");
        text(
            &mut img,
            &label,
            left.saturating_sub(6 + text_width(&label)),
            (y as u32).saturating_sub(5),
            ink,
        );
    }
    for k in 0..=4 {
        let step = (max_step * k as f64 / 4.0).round();
        let x = at((step, lo)).0;
        line(&mut img, (x, y0), (x, y0 + 4.0), ink);
        let label = format!("{step}");
        text(
            &mut img,
            &label,
            (x as u32).saturating_sub(text_width(&label) / 2),
            HEIGHT - bottom + 8,
            ink,
        );
    }
    line(&mut img, (x0, y0), (x1, y0), ink);
    line(&mut img, (x0, y0), (x0, y1), ink);
    text(&mut img, "loss", 4, 4, ink);
    text(
        &mut img,
        "step",
        WIDTH - right - text_width("step"),
        HEIGHT - 12,
        ink,
    );
    polyline(
        &mut img,
        points.iter().map(|&p| at(p)),
        Rgb([170, 200, 235]),
    );
    let window = (points.len() / 25).max(1);
    let smooth = points.iter().enumerate().map(|(i, &(s, _))| {
        let from = i.saturating_sub(window - 1);
        let mean = points[from..=i].iter().map(|p| p.1).sum::<f64>() / (i - from + 1) as f64;
        at((s, mean))
    });
    polyline(&mut img, smooth, Rgb([20, 70, 160]));
    img
}

fn polyline(img: &mut RgbImage, points: impl Iterator<Item = (f64, f64)>, color: Rgb<u8>) {
    let mut last: Option<(f64, f64)> = None;
    for p in points {
        match last {
            Some(q) => line(img, q, p, color),
            None => line(img, p, p, color),
        }
        last = Some(p);
    }
}

/// A straight line, one sample per pixel of its longer extent.
fn line(img: &mut RgbImage, a: (f64, f64), b: (f64, f64), color: Rgb<u8>) {
    let n = (b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil().max(1.0) as usize;
    for i in 0..=n {
        let t = i as f64 / n as f64;
        let (x, y) = (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t);
        if x >= 0.0 && y >= 0.0 && (x as u32) < img.width() && (y as u32) < img.height() {
            img.put_pixel(x as u32, y as u32, color);
        }
    }
}

/// Rows of each glyph, three bits per row, most significant bit on the left.
fn glyph(c: char) -> [u8; 5] {
    match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 2, 2],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        'e' => [0, 7, 7, 4, 7],
        'l' => [6, 2, 2, 2, 7],
        'o' => [0, 7, 5, 5, 7],
        's' => [0, 3, 6, 3, 6],
        't' => [2, 7, 2, 2, 3],
        'p' => [0, 7, 5, 7, 4],
        _ => [0; 5],
    }
}

fn text_width(s: &str) -> u32 {
    s.chars().count() as u32 * 4 * FONT_SCALE
}

fn text(img: &mut RgbImage, s: &str, x: u32, y: u32, color: Rgb<u8>) {
    for (i, c) in s.chars().enumerate() {
        for (row, bits) in glyph(c).iter().enumerate() {
            for col in 0..3u32 {
                if bits >> (2 - col) & 1 == 1 {
                    for dy in 0..FONT_SCALE {
                        for dx in 0..FONT_SCALE {
                            let px = x + (i as u32 * 4 + col) * FONT_SCALE + dx;
                            let py = y + row as u32 * FONT_SCALE + dy;
                            if px < img.width() && py < img.height() {
                                img.put_pixel(px, py, color);
                            }
                        }
                    }
                }
            }
        }
    }
}
