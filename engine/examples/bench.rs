//! Engine benchmark: one JSON object per line.
//!
//! `cargo run --release -p engine --example bench [-- --quick]`
//!
//! Matmuls (square, and the shapes of one ViT-B/16 block at batch 8), softmax and layer norm
//! on 1576x768, and the per-op dispatch overhead of a chain of tiny ops next to the same
//! chain recorded by hand with raw wgpu calls. `--quick` skips the largest matmuls. Each
//! matmul line names the kernel the device chose (`ENGINE_AUTOTUNE`).
//!
//! `--gpu` (tools/gpu-check): squares up to 4096, ViT-B at batch 64 with the weight
//! gradients, and the fused attention; it refuses a software adapter (set
//! `BENCH_ALLOW_SOFTWARE` to rehearse it there).

use std::time::Instant;

use engine::tune::MatmulKey;
use engine::{AttentionKernel, Device, Tensor};

/// Wall-clock milliseconds of one run of `f` (which records work), GPU wait included.
/// Runs until at least `min_iters` runs and `min_s` seconds have passed, after a warm-up
/// run (pipelines compiled, buffers pooled), and returns the median and the fastest run:
/// on a shared machine the median shows typical speed and the minimum what the code can do.
fn time_ms(dev: &Device, min_iters: usize, min_s: f64, mut f: impl FnMut()) -> (f64, f64) {
    f();
    dev.synchronize().unwrap();
    let start = Instant::now();
    let mut runs = Vec::new();
    while runs.len() < min_iters || start.elapsed().as_secs_f64() < min_s {
        let t = Instant::now();
        f();
        dev.synchronize().unwrap();
        runs.push(t.elapsed().as_secs_f64() * 1e3);
    }
    runs.sort_by(f64::total_cmp);
    (runs[runs.len() / 2], runs[0])
}

/// Time `a b` for a (batch, m, k) x (batch, k, n) product, A read transposed when
/// `trans_a` (a weight gradient, `x^T dy`), B when `trans_b`; names the kernel chosen.
fn matmul_line(dev: &Device, [batch, m, k, n]: [usize; 4], trans_a: bool, trans_b: bool) {
    let a = if trans_a {
        Tensor::rand(dev, &[batch, k, m], 1).unwrap().t().unwrap()
    } else {
        Tensor::rand(dev, &[batch, m, k], 1).unwrap()
    };
    let b = if trans_b {
        Tensor::rand(dev, &[batch, n, k], 2).unwrap().t().unwrap()
    } else {
        Tensor::rand(dev, &[batch, k, n], 2).unwrap()
    };
    let (ms, best_ms) = time_ms(dev, 5, 2.0, || {
        a.matmul(&b).unwrap();
    });
    let flop = 2.0 * (batch * m * k * n) as f64;
    let (gflops, best_gflops) = (flop / (ms * 1e-3) / 1e9, flop / (best_ms * 1e-3) / 1e9);
    let shape = if batch == 1 {
        format!("[{m},{k},{n}]")
    } else {
        format!("[{batch},{m},{k},{n}]")
    };
    let aligned = [m, k, n].iter().all(|v| v % 4 == 0);
    let bucket = MatmulKey {
        trans_a,
        trans_b,
        aligned,
        ..MatmulKey::of([m, n, k, batch])
    }
    .text();
    let kernel = dev
        .matmul_choices()
        .into_iter()
        .find(|(b, _)| *b == bucket)
        .map_or("?".into(), |(_, k)| k);
    println!(
        r#"{{"op":"matmul","shape":{shape},"trans_a":{trans_a},"trans_b":{trans_b},"kernel":"{kernel}","ms":{ms:.3},"gflops":{gflops:.2},"best_ms":{best_ms:.3},"best_gflops":{best_gflops:.2}}}"#
    );
}

/// The parameter shapes of a ViT-B/16 encoder (patch embedding, cls token, 12 blocks, final
/// norm): 85.8 million parameters.
fn vit_base_shapes() -> Vec<Vec<usize>> {
    let mut shapes = vec![
        vec![768, 768],
        vec![768],
        vec![1, 1, 768],
        vec![768],
        vec![768],
    ];
    for _ in 0..12 {
        shapes.extend([
            vec![768],
            vec![768],
            vec![768, 2304],
            vec![2304],
            vec![768, 768],
            vec![768],
            vec![768],
            vec![768],
            vec![768, 3072],
            vec![3072],
            vec![3072, 768],
            vec![768],
        ]);
    }
    shapes
}

fn adamw_step(dev: &Device) {
    let shapes = vit_base_shapes();
    let params: Vec<Tensor> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            Tensor::randn(dev, s, i as u64)
                .unwrap()
                .requires_grad(true)
                .unwrap()
        })
        .collect();
    let mut grads = engine::Gradients::default();
    for (i, p) in params.iter().enumerate() {
        grads
            .insert(p, Tensor::randn(dev, p.shape(), 1000 + i as u64).unwrap())
            .unwrap();
    }
    let count: usize = params.iter().map(Tensor::numel).sum();
    let (decay, no_decay): (Vec<Tensor>, Vec<Tensor>) =
        params.into_iter().partition(|p| p.rank() > 1);
    let mut opt = engine::AdamW::new(
        vec![
            engine::ParamGroup::new(decay, 1.5e-4, 0.05),
            engine::ParamGroup::new(no_decay, 1.5e-4, 0.0),
        ],
        (0.9, 0.95),
        1e-8,
    )
    .unwrap();
    let (ms, best_ms) = time_ms(dev, 3, 2.0, || opt.step(&grads).unwrap());
    println!(
        r#"{{"op":"adamw_step","params":{count},"tensors":{},"ms":{ms:.1},"best_ms":{best_ms:.1}}}"#,
        shapes.len()
    );
}

/// Forward and backward of one pre-norm transformer block, width 768, 12 heads, MLP 3072,
/// on 8 x 197 tokens (ViT-B/16 at batch 8), composed from engine ops.
fn block_forward_backward(dev: &Device, quick: bool) {
    let (b, n, d, h) = (8, 197, 768, 12);
    let param = |shape: &[usize], seed: u64| {
        Tensor::randn(dev, shape, seed)
            .unwrap()
            .mul_scalar(0.02)
            .unwrap()
            .requires_grad(true)
            .unwrap()
    };
    let ones = || {
        Tensor::ones(dev, &[d])
            .unwrap()
            .requires_grad(true)
            .unwrap()
    };
    let zeros = |k: usize| {
        Tensor::zeros(dev, &[k])
            .unwrap()
            .requires_grad(true)
            .unwrap()
    };
    let (g1, b1, g2, b2) = (ones(), zeros(d), ones(), zeros(d));
    let (wqkv, bqkv, wproj, bproj) = (
        param(&[d, 3 * d], 1),
        zeros(3 * d),
        param(&[d, d], 2),
        zeros(d),
    );
    let (w1, c1, w2, c2) = (
        param(&[d, 4 * d], 3),
        zeros(4 * d),
        param(&[4 * d, d], 4),
        zeros(d),
    );
    let x = Tensor::randn(dev, &[b, n, d], 5).unwrap();
    let run = || {
        let y = x.layer_norm(&g1, &b1, 1e-6).unwrap();
        let qkv = y.matmul(&wqkv).unwrap().add(&bqkv).unwrap();
        let qkv = qkv
            .reshape(&[b, n, 3, h, d / h])
            .unwrap()
            .permute(&[2, 0, 3, 1, 4])
            .unwrap();
        let head = |i| qkv.narrow(0, i, 1).unwrap().squeeze(0).unwrap();
        let (q, k, v) = (head(0), head(1), head(2));
        let attn = q
            .matmul(&k.t().unwrap())
            .unwrap()
            .mul_scalar(0.125)
            .unwrap()
            .softmax()
            .unwrap();
        let o = attn
            .matmul(&v)
            .unwrap()
            .permute(&[0, 2, 1, 3])
            .unwrap()
            .reshape(&[b, n, d])
            .unwrap();
        let x1 = x
            .add(&o.matmul(&wproj).unwrap().add(&bproj).unwrap())
            .unwrap();
        let m = x1
            .layer_norm(&g2, &b2, 1e-6)
            .unwrap()
            .matmul(&w1)
            .unwrap()
            .add(&c1)
            .unwrap()
            .gelu()
            .unwrap();
        let out = x1.add(&m.matmul(&w2).unwrap().add(&c2).unwrap()).unwrap();
        let grads = out.mean_all().unwrap().backward().unwrap();
        assert_eq!(grads.len(), 12);
    };
    dev.reset_peak();
    let (ms, best_ms) = time_ms(dev, if quick { 1 } else { 2 }, 0.0, run);
    // Forward 2·tokens·12·d² (projections and MLP) plus attention 4·b·n²·d; backward twice.
    let tokens = (b * n) as f64;
    let flop = 3.0 * (2.0 * tokens * 12.0 * (d * d) as f64 + 4.0 * (b * n * n * d) as f64);
    println!(
        r#"{{"op":"block_fwd_bwd","shape":[{b},{n},{d}],"heads":{h},"ms":{ms:.0},"best_ms":{best_ms:.0},"gflops":{:.2},"peak_bytes":{}}}"#,
        flop / (ms * 1e-3) / 1e9,
        dev.pool_stats().peak_bytes
    );
}

/// The tiled matrix product built with naga's runtime checks (the default) and without
/// them (`DeviceOptions::trusted_kernels`), each variant timed on both devices in turn.
fn runtime_checks(dev: &Device, s: usize) {
    let trusted = Device::with_options(engine::DeviceOptions {
        trusted_kernels: true,
        ..Default::default()
    })
    .unwrap();
    let tiles = [engine::tune::tile::DEEP, engine::tune::tile::CANDIDATES[6]];
    for tile in tiles.into_iter().filter(|t| t.fits(dev.info())) {
        let kernel = engine::tune::MatmulKernel::Tiled {
            tile: tile.with(true, true),
            splits: 1,
        };
        let time = |d: &Device| {
            let a = Tensor::rand(d, &[s, s], 1).unwrap();
            let b = Tensor::rand(d, &[s, s], 2).unwrap();
            time_ms(d, 5, 1.0, || {
                a.matmul_with(&b, None, kernel).unwrap();
            })
            .0
        };
        let (mut checked, mut unchecked) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            checked.push(time(dev));
            unchecked.push(time(&trusted));
        }
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (checked, unchecked) = (median(checked), median(unchecked));
        println!(
            r#"{{"op":"runtime_checks","shape":[{s},{s},{s}],"kernel":"{}","checked_ms":{checked:.3},"trusted_ms":{unchecked:.3},"speedup":{:.3}}}"#,
            kernel.name(),
            checked / unchecked
        );
    }
}

fn dispatch_overhead(dev: &Device, chain: usize) {
    let x = Tensor::zeros(dev, &[64]).unwrap();
    let run = || {
        let mut y = x.clone();
        for _ in 0..chain {
            y = y.add_scalar(1.0).unwrap();
        }
        assert_eq!(y.to_vec().unwrap()[0], chain as f32);
    };
    // Engine and raw runs alternate, five each, so both see the same machine load; the
    // medians are compared.
    run();
    let raw = raw::Chain::new(chain);
    let (mut engine_runs, mut raw_runs, mut fresh_runs) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5 {
        let start = Instant::now();
        run();
        engine_runs.push(start.elapsed().as_secs_f64() * 1e6 / chain as f64);
        raw_runs.push(raw.us_per_op(true));
        fresh_runs.push(raw.us_per_op(false));
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (engine_us, raw_us) = (median(engine_runs), median(raw_runs));
    // The raw chain reuses its two bind groups, as the engine's cache does; a fresh bind
    // group per dispatch (what the engine did before) is shown beside.
    println!(
        r#"{{"op":"dispatch_overhead","chain":{chain},"us_per_op":{engine_us:.2},"raw_wgpu_us_per_op":{raw_us:.2},"ratio":{:.2},"raw_wgpu_fresh_bind_groups_us_per_op":{:.2}}}"#,
        engine_us / raw_us,
        median(fresh_runs)
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    // ViT-B at batch 64 and larger squares, for a GPU; refuses to run on a CPU adapter.
    let gpu = std::env::args().any(|a| a == "--gpu");
    // The adapter alone, refused when it is a software one: the GPU check's probe.
    let probe = std::env::args().any(|a| a == "--probe");
    let dev = match Device::new() {
        Ok(dev) => dev,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(3);
        }
    };
    let info = dev.info();
    println!(
        r#"{{"adapter":{:?},"backend":{:?},"device_type":{:?},"driver":{:?},"autotune":"{:?}","cooperative_matrices":{:?},"info":{:?}}}"#,
        info.name,
        info.backend,
        info.device_type,
        info.driver,
        dev.autotune(),
        info.cooperative_matrices,
        info.to_string()
    );
    if (gpu || probe) && info.is_software() && std::env::var_os("BENCH_ALLOW_SOFTWARE").is_none() {
        eprintln!(
            "error: a software adapter ({}): no GPU figures from it",
            info.name
        );
        std::process::exit(3);
    }
    if probe {
        return;
    }

    let squares: &[usize] = match (gpu, quick) {
        (true, true) => &[1024],
        (true, false) => &[1024, 2048, 4096],
        (false, true) => &[256, 512, 1024],
        (false, false) => &[256, 512, 1024, 2048],
    };
    for &s in squares {
        matmul_line(&dev, [1, s, s, s], false, false);
    }
    runtime_checks(&dev, squares[squares.len() - 1]);
    // One ViT-B/16 block: 197 tokens an image, width 768, 12 heads of 64; batch 8, or 64 on
    // a GPU (unless --quick). The forward's products, then the weight gradients (x^T dy, k = tokens).
    let images = if gpu && !quick { 64 } else { 8 };
    let tokens = images * 197;
    matmul_line(&dev, [1, tokens, 768, 2304], false, false); // qkv
    matmul_line(&dev, [1, tokens, 768, 3072], false, false); // fc1
    matmul_line(&dev, [1, tokens, 3072, 768], false, false); // fc2
    if gpu {
        matmul_line(&dev, [1, 768, tokens, 2304], true, false); // qkv weight gradient
        matmul_line(&dev, [1, 3072, tokens, 768], true, false); // fc2 weight gradient
    }
    let heads = images * 12;
    matmul_line(&dev, [heads, 197, 64, 197], false, true); // q k^T, k read transposed
    matmul_line(&dev, [heads, 197, 197, 64], false, false); // attn v

    let rows = tokens;
    let x = Tensor::rand(&dev, &[rows, 768], 3).unwrap();
    let w = Tensor::ones(&dev, &[768]).unwrap();
    let b = Tensor::zeros(&dev, &[768]).unwrap();
    let bytes = (2 * rows * 768 * 4) as f64;
    let row_ops: [(&str, &dyn Fn()); 2] = [
        ("softmax", &|| {
            x.softmax().unwrap();
        }),
        ("layer_norm", &|| {
            x.layer_norm(&w, &b, 1e-6).unwrap();
        }),
    ];
    for (op, f) in row_ops {
        let (ms, best_ms) = time_ms(&dev, 10, 0.5, f);
        let gb_per_s = bytes / (ms * 1e-3) / 1e9;
        println!(
            r#"{{"op":"{op}","shape":[{rows},768],"ms":{ms:.3},"gb_per_s":{gb_per_s:.2},"best_ms":{best_ms:.3}}}"#
        );
    }
    for kernel in [AttentionKernel::Rows, AttentionKernel::Tiled] {
        attention(&dev, images, kernel);
    }

    adamw_step(&dev);
    block_forward_backward(&dev, quick);
    dispatch_overhead(&dev, 10_000);
    let stats = dev.pool_stats();
    println!(
        r#"{{"pool":{{"peak_bytes":{},"allocations":{},"reuses":{}}},"pipelines":{}}}"#,
        stats.peak_bytes,
        stats.allocations,
        stats.reuses,
        dev.pipeline_count()
    );
}

/// The fused multi-head attention of a ViT-B block (12 heads of 64 over 197 tokens) on
/// `images` images with one family of kernels, forward alone and forward with backward.
fn attention(dev: &Device, images: usize, kernel: AttentionKernel) {
    let (n, d, h) = (197, 768, 12);
    let qkv = Tensor::randn(dev, &[images, n, 3 * d], 7)
        .unwrap()
        .requires_grad(true)
        .unwrap();
    let g = Tensor::randn(dev, &[images, n, d], 8).unwrap();
    let (fwd_ms, _) = time_ms(dev, 5, 1.0, || {
        engine::no_grad(|| qkv.qkv_attention_with(h, kernel)).unwrap();
    });
    let (both_ms, _) = time_ms(dev, 3, 1.0, || {
        let y = qkv.qkv_attention_with(h, kernel).unwrap();
        y.mul(&g).unwrap().sum_all().unwrap().backward().unwrap();
    });
    // q k^T and attn v: 4 b h n^2 (d/h) each way; the backward recomputes and doubles it.
    let flop = 4.0 * (images * n * n * d) as f64;
    println!(
        r#"{{"op":"qkv_attention","kernel":"{kernel:?}","default":{},"shape":[{images},{n},{d}],"heads":{h},"forward_ms":{fwd_ms:.2},"forward_gflops":{:.1},"fwd_bwd_ms":{both_ms:.2}}}"#,
        dev.attention_kernel() == kernel,
        flop / (fwd_ms * 1e-3) / 1e9
    );
}

/// The same chain of tiny dispatches recorded by hand: one encoder, one compute pass,
/// ping-ponging between two buffers (through two bind groups made once, or a fresh bind
/// group per dispatch), one read-back.
mod raw {
    use std::time::Instant;

    pub struct Chain {
        chain: usize,
        device: wgpu::Device,
        queue: wgpu::Queue,
        pipeline: wgpu::ComputePipeline,
        uniform: wgpu::Buffer,
        bufs: [wgpu::Buffer; 2],
        staging: wgpu::Buffer,
    }

    impl Chain {
        pub fn new(chain: usize) -> Chain {
            let instance = wgpu::Instance::new(
                wgpu::InstanceDescriptor::new_without_display_handle_from_env(),
            );
            let adapter =
                pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
                    power_preference: wgpu::PowerPreference::HighPerformance,
                    ..Default::default()
                }))
                .expect("adapter");
            let (device, queue) =
                pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor::default()))
                    .expect("device");
            let shader = engine::kernels::ALL_SHADERS
                .iter()
                .find(|s| s.file == "elementwise.wgsl")
                .unwrap();
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: None,
                source: wgpu::ShaderSource::Wgsl(shader.source.into()),
            });
            let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: None,
                layout: None,
                module: &module,
                entry_point: Some("unary"),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &[("OP", 10.0), ("CONTIG", 1.0)],
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
            // StridedParams: numel 64, rank 1, scalar 1.0 (add_scalar), zero offsets.
            let mut params = [0u8; 208];
            params[0..4].copy_from_slice(&64u32.to_le_bytes());
            params[4..8].copy_from_slice(&1u32.to_le_bytes());
            params[8..12].copy_from_slice(&1.0f32.to_le_bytes());
            let uniform = device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: 256,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            queue.write_buffer(&uniform, 0, &params);
            let storage = || {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: None,
                    size: 256,
                    usage: wgpu::BufferUsages::STORAGE
                        | wgpu::BufferUsages::COPY_SRC
                        | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            };
            let bufs = [storage(), storage()];
            let staging = device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: 256,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let c = Chain {
                chain,
                device,
                queue,
                pipeline,
                uniform,
                bufs,
                staging,
            };
            c.us_per_op(true); // warm-up
            c
        }

        /// Microseconds per dispatch, with the two bind groups made once (`reuse`) or a
        /// fresh one per dispatch.
        pub fn us_per_op(&self, reuse: bool) -> f64 {
            let start = Instant::now();
            let layout = self.pipeline.get_bind_group_layout(0);
            let bind_group = |i: usize| {
                let (src, dst) = (&self.bufs[i % 2], &self.bufs[(i + 1) % 2]);
                self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: None,
                    layout: &layout,
                    entries: &[
                        wgpu::BindGroupEntry {
                            binding: 0,
                            resource: self.uniform.as_entire_binding(),
                        },
                        wgpu::BindGroupEntry {
                            binding: 1,
                            resource: dst.as_entire_binding(),
                        },
                        wgpu::BindGroupEntry {
                            binding: 2,
                            resource: src.as_entire_binding(),
                        },
                    ],
                })
            };
            let made = [bind_group(0), bind_group(1)];
            let mut encoder = self.device.create_command_encoder(&Default::default());
            {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                pass.set_pipeline(&self.pipeline);
                for i in 0..self.chain {
                    match reuse {
                        true => pass.set_bind_group(0, &made[i % 2], &[]),
                        false => pass.set_bind_group(0, &bind_group(i), &[]),
                    }
                    pass.dispatch_workgroups(1, 1, 1);
                }
            }
            encoder.copy_buffer_to_buffer(&self.bufs[self.chain % 2], 0, &self.staging, 0, 256);
            self.queue.submit([encoder.finish()]);
            self.staging.map_async(wgpu::MapMode::Read, .., |_| {});
            self.device
                .poll(wgpu::PollType::Wait {
                    submission_index: None,
                    timeout: None,
                })
                .unwrap();
            self.staging.unmap();
            start.elapsed().as_secs_f64() * 1e6 / self.chain as f64
        }
    }
}
