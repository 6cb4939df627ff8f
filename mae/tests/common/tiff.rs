//! A baseline TIFF writer for the tests: uncompressed, one strip per plane, any number of
//! bands, 8- or 16-bit unsigned or 32-bit float samples, interleaved or planar. Written
//! from the TIFF 6.0 layout so that the decoder under test meets files it did not make.

/// Samples of one type.
pub enum Samples {
    U8(Vec<u8>),
    U16(Vec<u16>),
    F32(Vec<f32>),
}

impl Samples {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Samples::U8(v) => v.clone(),
            Samples::U16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Samples::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }

    fn bits(&self) -> u16 {
        match self {
            Samples::U8(_) => 8,
            Samples::U16(_) => 16,
            Samples::F32(_) => 32,
        }
    }
}

/// A little-endian TIFF of `width x height` pixels of `bands` bands; `samples` are in
/// `(H, W, bands)` order when `planar` is false, `(bands, H, W)` when it is true.
pub fn tiff(width: u32, height: u32, bands: u16, samples: &Samples, planar: bool) -> Vec<u8> {
    let data = samples.bytes();
    let planes = if planar { bands as usize } else { 1 };
    let strip = data.len() / planes;
    let bits = samples.bits();
    let format = if matches!(samples, Samples::F32(_)) {
        3
    } else {
        1
    };
    // Header, pixel data, the arrays too long to sit in their IFD entry, then the IFD.
    let mut out = b"II*\0\0\0\0\0".to_vec();
    let data_at = out.len() as u32;
    out.extend(&data);
    let offsets: Vec<u32> = (0..planes as u32)
        .map(|p| data_at + p * strip as u32)
        .collect();
    let photometric = if bands == 3 { 2 } else { 1 };
    let n = bands as usize;
    // (tag, short or long, values)
    let entries: Vec<(u16, bool, Vec<u32>)> = vec![
        (256, false, vec![width]),
        (257, false, vec![height]),
        (258, true, vec![bits as u32; n]),
        (259, true, vec![1]),
        (262, true, vec![photometric]),
        (273, false, offsets),
        (277, true, vec![bands as u32]),
        (278, false, vec![height]),
        (279, false, vec![strip as u32; planes]),
        (284, true, vec![if planar { 2 } else { 1 }]),
        (339, true, vec![format; n]),
    ];
    let encode = |short: bool, values: &[u32]| -> Vec<u8> {
        values
            .iter()
            .flat_map(|&v| match short {
                true => (v as u16).to_le_bytes().to_vec(),
                false => v.to_le_bytes().to_vec(),
            })
            .collect()
    };
    let mut fields = Vec::new();
    for (tag, short, values) in &entries {
        let mut bytes = encode(*short, values);
        if bytes.len() > 4 {
            let at = out.len() as u32;
            out.extend(&bytes);
            bytes = at.to_le_bytes().to_vec();
        }
        bytes.resize(4, 0);
        fields.push((
            *tag,
            if *short { 3u16 } else { 4 },
            values.len() as u32,
            bytes,
        ));
    }
    if out.len() % 2 == 1 {
        out.push(0);
    }
    let ifd_at = out.len() as u32;
    out[4..8].copy_from_slice(&ifd_at.to_le_bytes());
    out.extend((fields.len() as u16).to_le_bytes());
    for (tag, kind, count, value) in fields {
        out.extend(tag.to_le_bytes());
        out.extend(kind.to_le_bytes());
        out.extend(count.to_le_bytes());
        out.extend(value);
    }
    out.extend(0u32.to_le_bytes());
    out
}
