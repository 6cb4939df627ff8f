//! One image file to `f32` planes, channels first: PNG and JPEG through `image` (gray or
//! RGB, 8 or 16 bits; alpha is dropped, as the reference's PIL `convert("RGB")` does), and
//! TIFF through `tiff` (any number of bands, interleaved or planar; 8- to 64-bit integer and
//! 16- to 64-bit float samples).
//!
//! Integer samples are scaled to `[0, 1]` by their type's range (an unsigned 16-bit sample
//! by 65535, a 12-bit one by 4095; signed ones from their minimum); float samples are kept
//! as they are.

use std::path::Path;

use tiff::decoder::{Decoder, DecodingResult};

use super::{DataError, Image};

/// The largest image file read: 256 MiB.
pub const FILE_LIMIT: u64 = 256 << 20;

/// The most memory one decoded image may take as `f32` values: 1 GiB (a 16384 x 16384 gray
/// image, or 9459 x 9459 in RGB). A larger one is refused from its header, before decoding.
pub const DECODED_LIMIT: u64 = 1 << 30;

/// The file extensions read, lower case.
pub const EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "tif", "tiff"];

/// Decode the file at `path` to `channels` channels (see [`Image::into_channels`]).
///
/// # Errors
/// [`DataError`] naming the file: unreadable, not a regular file, larger than
/// [`FILE_LIMIT`], undecodable, more than [`DECODED_LIMIT`] once decoded, or with bands
/// that cannot make `channels`.
pub fn decode(path: &Path, channels: usize) -> Result<Image, DataError> {
    let name = path.display().to_string();
    let bytes = nn::files::read_bounded(path, FILE_LIMIT).map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidData => DataError::Corrupt(name.clone(), e.to_string()),
        _ => DataError::Io(name.clone(), e),
    })?;
    decode_bytes(&name, &bytes, channels)
}

/// [`decode`] for a file already in memory (a shard's member), named `name`.
///
/// # Errors
/// As [`decode`].
pub fn decode_bytes(name: &str, bytes: &[u8], channels: usize) -> Result<Image, DataError> {
    if is_tiff(bytes) {
        decode_tiff(name, bytes)?.into_channels(channels, name)
    } else {
        decode_picture(name, bytes, channels)
    }
}

/// How many bands the file at `path` has, from its header: a TIFF's samples per pixel; 3 for
/// a colour PNG or JPEG, 1 for a gray one.
///
/// # Errors
/// As [`decode`].
pub fn bands_of(path: &Path) -> Result<usize, DataError> {
    let name = path.display().to_string();
    let bytes =
        nn::files::read_bounded(path, FILE_LIMIT).map_err(|e| DataError::Io(name.clone(), e))?;
    bands_of_bytes(&name, &bytes)
}

/// [`bands_of`] for a file already in memory, named `name`.
///
/// # Errors
/// As [`decode`].
pub fn bands_of_bytes(name: &str, bytes: &[u8]) -> Result<usize, DataError> {
    use image::ImageDecoder;
    let corrupt = |e: String| DataError::Corrupt(name.into(), e);
    if is_tiff(bytes) {
        let mut decoder =
            Decoder::new(std::io::Cursor::new(bytes)).map_err(|e| corrupt(e.to_string()))?;
        let color = decoder.colortype().map_err(|e| corrupt(e.to_string()))?;
        return Ok(color.num_samples() as usize);
    }
    let decoder = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| DataError::Io(name.into(), e))?
        .into_decoder()
        .map_err(|e| corrupt(e.to_string()))?;
    Ok(if decoder.color_type().has_color() {
        3
    } else {
        1
    })
}

fn is_tiff(bytes: &[u8]) -> bool {
    bytes.starts_with(b"II*\0") || bytes.starts_with(b"MM\0*")
}

/// Refuse an image of `width x height x bands` that would take more than [`DECODED_LIMIT`].
fn check_size(name: &str, width: u64, height: u64, bands: u64) -> Result<(), DataError> {
    let decoded = width * height * bands * 4;
    match decoded > DECODED_LIMIT {
        false => Ok(()),
        true => Err(DataError::Corrupt(
            name.into(),
            format!(
                "{width}x{height} pixels take {decoded} bytes as f32 in {bands} bands, more than the {DECODED_LIMIT} an image may"
            ),
        )),
    }
}

/// PNG and JPEG (and whatever else `image` is built for), to gray (its luma) or RGB.
fn decode_picture(name: &str, bytes: &[u8], channels: usize) -> Result<Image, DataError> {
    let corrupt = |e: image::ImageError| DataError::Corrupt(name.into(), e.to_string());
    let reader = || {
        image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| DataError::Io(name.into(), e))
    };
    let (width, height) = reader()?.into_dimensions().map_err(corrupt)?;
    check_size(name, width as u64, height as u64, channels as u64)?;
    let mut reader = reader()?;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(DECODED_LIMIT);
    reader.limits(limits);
    let img = reader.decode().map_err(corrupt)?;
    let (width, height) = (img.width() as usize, img.height() as usize);
    let data = match channels {
        1 => img.to_luma32f().into_raw(),
        // The common case, 8-bit RGB, without an interleaved f32 copy on the way.
        3 if matches!(img, image::DynamicImage::ImageRgb8(_)) => {
            interleaved_to_planes(img.as_bytes(), 3, |v| v as f32 / 255.0)
        }
        3 => interleaved_to_planes(&img.to_rgb32f().into_raw(), 3, |v| v),
        _ => {
            let bands = if img.color().has_color() { 3 } else { 1 };
            return Err(bands_differ(name, bands, channels));
        }
    };
    Ok(Image {
        channels,
        height,
        width,
        data,
        bounded: true,
    })
}

/// The first image of a TIFF file, every band.
fn decode_tiff(name: &str, bytes: &[u8]) -> Result<Image, DataError> {
    let corrupt = |e: tiff::TiffError| DataError::Corrupt(name.into(), e.to_string());
    let mut limits = tiff::decoder::Limits::default();
    limits.decoding_buffer_size = DECODED_LIMIT as usize;
    let mut decoder = Decoder::new(std::io::Cursor::new(bytes))
        .map_err(corrupt)?
        .with_limits(limits);
    let (width, height) = decoder.dimensions().map_err(corrupt)?;
    let color = decoder.colortype().map_err(corrupt)?;
    if matches!(color, tiff::ColorType::Palette(_)) {
        return Err(DataError::Corrupt(
            name.into(),
            "a palette TIFF: its samples are colour indices, not intensities".into(),
        ));
    }
    let bands = color.num_samples() as usize;
    check_size(name, width as u64, height as u64, bands as u64)?;
    let mut samples = DecodingResult::U8(Vec::new());
    let layout = decoder
        .read_image_to_buffer(&mut samples)
        .map_err(corrupt)?;
    let values = unit_values(samples, color.bit_depth());
    let (width, height) = (width as usize, height as usize);
    if values.0.len() != width * height * bands {
        return Err(DataError::Corrupt(
            name.into(),
            format!(
                "{} samples for {width}x{height} pixels of {bands} bands",
                values.0.len()
            ),
        ));
    }
    let data = match layout.planes {
        1 => interleaved_to_planes(&values.0, bands, |v| v),
        _ => values.0, // planar: one band after another already
    };
    Ok(Image {
        channels: bands,
        height,
        width,
        data,
        bounded: values.1,
    })
}

/// Samples as `f32`: integers scaled to `[0, 1]` by the range of `bits` bits, floats as they
/// are; and whether the values are bounded to `[0, 1]`.
fn unit_values(samples: DecodingResult, bits: u8) -> (Vec<f32>, bool) {
    let max = ((1u128 << bits.clamp(1, 64)) - 1) as f64;
    let half = (1u128 << (bits.clamp(1, 64) - 1)) as f64;
    let unsigned = |v: f64| (v / max) as f32;
    let signed = |v: f64| ((v + half) / max) as f32;
    match samples {
        DecodingResult::U8(v) => (v.into_iter().map(|x| unsigned(x as f64)).collect(), true),
        DecodingResult::U16(v) => (v.into_iter().map(|x| unsigned(x as f64)).collect(), true),
        DecodingResult::U32(v) => (v.into_iter().map(|x| unsigned(x as f64)).collect(), true),
        DecodingResult::U64(v) => (v.into_iter().map(|x| unsigned(x as f64)).collect(), true),
        DecodingResult::I8(v) => (v.into_iter().map(|x| signed(x as f64)).collect(), true),
        DecodingResult::I16(v) => (v.into_iter().map(|x| signed(x as f64)).collect(), true),
        DecodingResult::I32(v) => (v.into_iter().map(|x| signed(x as f64)).collect(), true),
        DecodingResult::I64(v) => (v.into_iter().map(|x| signed(x as f64)).collect(), true),
        DecodingResult::F16(v) => (v.into_iter().map(f32::from).collect(), false),
        DecodingResult::F32(v) => (v, false),
        DecodingResult::F64(v) => (v.into_iter().map(|x| x as f32).collect(), false),
    }
}

/// `(H, W, bands)` samples to `(bands, H, W)` values, each through `value`.
fn interleaved_to_planes<T: Copy>(hwc: &[T], bands: usize, value: impl Fn(T) -> f32) -> Vec<f32> {
    let plane = hwc.len() / bands;
    let mut out = vec![0.0; hwc.len()];
    for (p, pixel) in hwc.chunks_exact(bands).enumerate() {
        for (c, &v) in pixel.iter().enumerate() {
            out[c * plane + p] = value(v);
        }
    }
    out
}

/// The error for a file whose bands cannot make the model's channels.
pub(crate) fn bands_differ(name: &str, bands: usize, channels: usize) -> DataError {
    DataError::Bands(format!(
        "{name}: {bands} bands, where the model takes {channels} channels"
    ))
}

impl Image {
    /// This image with `channels` channels: its own bands when they are as many, gray
    /// repeated to RGB, RGB reduced to its luma (Rec. 709 weights, as `image`'s luma of PNG
    /// and JPEG files).
    ///
    /// # Errors
    /// [`DataError::Bands`] for any other pair, naming the file `name`.
    pub fn into_channels(self, channels: usize, name: &str) -> Result<Image, DataError> {
        let plane = self.height * self.width;
        let data = match (self.channels, channels) {
            (from, to) if from == to => return Ok(self),
            (1, 3) => self.data.repeat(3),
            (3, 1) => (0..plane)
                .map(|i| {
                    let [r, g, b] = [0, 1, 2].map(|c| self.data[c * plane + i]);
                    0.2126 * r + 0.7152 * g + 0.0722 * b
                })
                .collect(),
            (from, to) => return Err(bands_differ(name, from, to)),
        };
        Ok(Image {
            channels,
            data,
            ..self
        })
    }
}
