//! Every matrix-product kernel this adapter can run (the 8-lane kernels and each tiled
//! variant, with split-K) against the CPU reference over awkward shapes: every size of
//! 1, 3, 5, 17, 31 to 33, 63 to 65, 127 to 129 and 197 in each of m, n and k, both
//! transposes, bias, batches broadcast, and operands at an offset into their buffer. Then
//! again with workgroup memory poisoned with NaN, which turns a missing barrier into NaN,
//! and again with f16 operands (the mixed-precision builds) against the reference on the
//! operands rounded to f16.

mod common;
use common::*;
use engine::reference;
use engine::tune::{MatmulKernel, Tile};
use engine::{Device, DeviceOptions, Tensor};
use half::f16;

const SIZES: [usize; 14] = [1, 3, 5, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 197];
const ALIGNED: [usize; 7] = [4, 8, 32, 64, 68, 128, 196];

/// One product to check: sizes, layout and the host values of its operands and result.
struct Case {
    what: String,
    a: Tensor,
    b: Tensor,
    bias: Option<Tensor>,
    want: Vec<f32>,
}

/// A `rows x cols` operand, stored transposed when `trans` (a `t()` view), at an offset
/// into a larger buffer when `offset` (a `narrow` view), with `batch` leading copies; in
/// f16 when `half` (the host values rounded as the GPU rounds them).
fn operand(
    dev: &Device,
    (rows, cols): (usize, usize),
    (trans, offset, half): (bool, bool, bool),
    batch: usize,
    seed: u64,
) -> (Tensor, Vec<f32>) {
    let skip = if offset { 4 } else { 0 };
    let (sr, sc) = if trans {
        (cols, rows + skip)
    } else {
        (rows + skip, cols)
    };
    let mut host = data(batch * sr * sc, seed);
    let mut full = Tensor::from_slice(dev, &host, &[batch, sr, sc]).unwrap();
    if half {
        full = full.to_half().unwrap();
        host = host.iter().map(|&v| f16::from_f32(v).to_f32()).collect();
    }
    // The viewed (rows, cols) matrix, past `skip` stored rows (columns when transposed).
    let view = if trans {
        full.narrow(2, skip, rows).unwrap().transpose(1, 2).unwrap()
    } else {
        full.narrow(1, skip, rows).unwrap()
    };
    let mut values = Vec::with_capacity(batch * rows * cols);
    for z in 0..batch {
        for r in 0..rows {
            for c in 0..cols {
                let (i, j) = if trans { (c, r + skip) } else { (r + skip, c) };
                values.push(host[(z * sr + i) * sc + j]);
            }
        }
    }
    (view, values)
}

fn case(dev: &Device, i: usize, (m, n, k): (usize, usize, usize), half: bool) -> Case {
    let (ta, tb, with_bias) = (i % 2 == 1, (i / 2) % 2 == 1, i.is_multiple_of(3));
    // Batches: none, two on both sides, three with B broadcast, an offset A.
    let (batch, b_batch, offset) = match i % 4 {
        0 => (1, 1, false),
        1 => (2, 2, false),
        2 => (3, 1, false),
        _ => (1, 1, true),
    };
    let (a, ha) = operand(dev, (m, k), (ta, offset, half), batch, 1000 + i as u64);
    let (b, hb) = operand(dev, (k, n), (tb, false, half), b_batch, 2000 + i as u64);
    let (a, b) = match (batch, b_batch) {
        (1, _) => (a.squeeze(0).unwrap(), b.squeeze(0).unwrap()),
        (_, 1) => (a, b.squeeze(0).unwrap()),
        _ => (a, b),
    };
    let (bias, hbias) = if with_bias {
        let h = data(n, 3000 + i as u64);
        (Some(Tensor::from_slice(dev, &h, &[n]).unwrap()), h)
    } else {
        (None, vec![0.0; n])
    };
    let mut want = Vec::new();
    for z in 0..batch {
        let bz = if b_batch == 1 { 0 } else { z };
        let product = reference::matmul(
            &ha[z * m * k..(z + 1) * m * k],
            &hb[bz * k * n..(bz + 1) * k * n],
            m,
            k,
            n,
        );
        want.extend(
            product
                .chunks(n)
                .flat_map(|row| row.iter().zip(&hbias).map(|(v, b)| v + b)),
        );
    }
    Case {
        what: format!(
            "{m}x{n}x{k} ta={ta} tb={tb} bias={with_bias} batch={batch}/{b_batch} offset={offset} f16={half}"
        ),
        a,
        b,
        bias,
        want,
    }
}

/// Every size appears as m, n and k; aligned problems exercise the vec4 loaders.
fn cases(dev: &Device, half: bool) -> Vec<Case> {
    let s = |i: usize| SIZES[i % SIZES.len()];
    let mut shapes: Vec<(usize, usize, usize)> = (0..SIZES.len())
        .map(|i| (s(i), s(i * 5 + 3), s(i * 3 + 7)))
        .collect();
    let al = |i: usize| ALIGNED[i % ALIGNED.len()];
    shapes.extend((0..ALIGNED.len()).map(|i| (al(i), al(i * 3 + 2), al(i * 5 + 4))));
    shapes
        .into_iter()
        .enumerate()
        .map(|(i, shape)| case(dev, i, shape, half))
        .collect()
}

fn kernels(dev: &Device) -> Vec<MatmulKernel> {
    let mut kernels = vec![MatmulKernel::Lanes];
    for tile in Tile::all().filter(|t| t.fits(dev.info())) {
        kernels.push(MatmulKernel::Tiled { tile, splits: 1 });
        // Split-K depends on the loader (vec4 chunks of k), not on the tile's shape.
        if tile.double_buffer == tile.vec4 {
            kernels.push(MatmulKernel::Tiled { tile, splits: 3 });
        }
    }
    kernels
}

/// Run every kernel on every case it can take; returns how many products were checked.
fn check_all(dev: &Device, cases: &[Case]) -> usize {
    let mut checked = 0;
    for kernel in kernels(dev) {
        for c in cases {
            let got = match c.a.matmul_with(&c.b, c.bias.as_ref(), kernel) {
                Ok(t) => t.to_vec().unwrap(),
                // vec4 loads on an unaligned problem: not this variant's job.
                Err(e) if e.to_string().contains("cannot run this problem") => continue,
                Err(e) => panic!("{} on {}: {e}", kernel.name(), c.what),
            };
            assert_close(
                &got,
                &c.want,
                1e-4,
                1e-4,
                &format!("{} on {}", kernel.name(), c.what),
            );
            checked += 1;
        }
    }
    checked
}

#[test]
fn every_kernel_matches_the_reference_on_awkward_shapes() {
    let dev = dev();
    let cases = cases(&dev, false);
    let checked = check_all(&dev, &cases);
    let variants = kernels(&dev).len();
    assert!(variants > 10, "only {variants} kernels fit this adapter");
    assert!(
        checked > variants * SIZES.len(),
        "{checked} products checked"
    );
}

/// The proof the tiled variants' bounds rest on (and what lets a device build them without
/// runtime checks, `DeviceOptions::trusted_kernels`): with their workgroup memory poisoned
/// with NaN, every variant's products are right.
#[test]
fn no_kernel_reads_workgroup_memory_before_it_is_written() {
    let dev = Device::with_options(DeviceOptions {
        poison_workgroup_memory: true,
        ..Default::default()
    })
    .unwrap();
    check_all(&dev, &poisoned_cases(&dev));
}

/// Several k steps, and partial blocks at every edge.
fn poisoned_cases(dev: &Device) -> Vec<Case> {
    [(33, 65, 129), (64, 32, 68), (5, 3, 197)]
        .into_iter()
        .enumerate()
        .map(|(i, shape)| case(dev, i, shape, false))
        .collect()
}

/// Built without runtime checks, as the proof above allows, variants compute the same
/// products, on poisoned memory too (a third of the variants: each is compiled again).
#[test]
fn trusted_builds_compute_the_same_products() {
    let dev = Device::with_options(DeviceOptions {
        poison_workgroup_memory: true,
        trusted_kernels: true,
        ..Default::default()
    })
    .unwrap();
    assert!(dev.trusted_kernels());
    let cases = poisoned_cases(&dev);
    for kernel in kernels(&dev).into_iter().step_by(3) {
        for c in &cases {
            if let Ok(t) = c.a.matmul_with(&c.b, c.bias.as_ref(), kernel) {
                let what = format!("trusted {} on {}", kernel.name(), c.what);
                assert_close(&t.to_vec().unwrap(), &c.want, 1e-4, 1e-4, &what);
            }
        }
    }
}

/// The f16-operand builds read half-width operands and still accumulate in f32: the same
/// tolerance as above against the f32 reference on the rounded operands.
#[test]
fn every_kernel_with_f16_operands_matches_the_reference() {
    let dev = dev();
    if !dev.info().features.shader_f16 {
        eprintln!("skipped: the adapter has no SHADER_F16");
        return;
    }
    let cases = cases(&dev, true);
    let checked = check_all(&dev, &cases);
    assert!(
        checked > kernels(&dev).len() * SIZES.len(),
        "{checked} products checked"
    );
}
