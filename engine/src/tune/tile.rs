//! Variants of the tiled matrix product (`shaders/matmul_tiled.wgsl`): the template's
//! `BEGIN TILE` .. `END TILE` lines are replaced by a variant's tile sizes, buffer count and
//! global-memory loader, and each variant is compiled as a kernel of its own.

use crate::info::DeviceInfo;
use crate::kernels::{generated, specialise, Kernel, MATMUL_TILED, MATMUL_TILED_T};

/// One variant of the tiled matrix product.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tile {
    /// Output rows per workgroup.
    pub bm: u32,
    /// Output columns per workgroup.
    pub bn: u32,
    /// Step along k staged in workgroup memory.
    pub bk: u32,
    /// Output rows per invocation (its register tile).
    pub tm: u32,
    /// Output columns per invocation.
    pub tn: u32,
    /// Read global memory as vec4s: only for problems whose sizes, strides and offsets are
    /// multiples of 4.
    pub vec4: bool,
    /// Two tile buffers: copy the next tile while using this one.
    pub double_buffer: bool,
}

/// The classic large tile, 8x8 outputs per invocation (256 invocations; 16 KiB of workgroup
/// memory double-buffered): the default on NVIDIA and AMD GPUs.
pub const LARGE: Tile = tile(128, 128, 8, 8, 8);
/// A deeper k step for a smaller tile: the default on Apple GPUs.
pub const DEEP: Tile = tile(64, 64, 16, 4, 4);
/// Within every WebGPU adapter's limits (64 invocations, 4 KiB): the default elsewhere, and
/// the fallback where a vendor's tile does not fit.
pub const PORTABLE: Tile = tile(64, 64, 8, 4, 4);

/// The variants the tuner times, largest tiles first. On an adapter, only those that
/// [`Tile::fits`] are compiled.
pub const CANDIDATES: &[Tile] = &[
    LARGE,
    tile(128, 64, 8, 8, 4),
    tile(64, 128, 8, 4, 8),
    DEEP,
    PORTABLE,
    tile(32, 64, 8, 4, 4),
    tile(32, 32, 8, 2, 2),
    tile(32, 32, 8, 4, 4),
    tile(16, 16, 8, 2, 2),
];

const fn tile(bm: u32, bn: u32, bk: u32, tm: u32, tn: u32) -> Tile {
    Tile {
        bm,
        bn,
        bk,
        tm,
        tn,
        vec4: false,
        double_buffer: false,
    }
}

impl Tile {
    /// Invocations per workgroup.
    pub fn threads(&self) -> u32 {
        (self.bm / self.tm) * (self.bn / self.tn)
    }

    /// Bytes of workgroup memory.
    pub fn shared_bytes(&self) -> u32 {
        4 * self.bk * (self.bm + self.bn) * if self.double_buffer { 2 } else { 1 }
    }

    /// Whether the adapter can run this variant: invocations and workgroup memory within its
    /// limits. A variant that does not fit is never compiled for it.
    pub fn fits(&self, info: &DeviceInfo) -> bool {
        self.threads() <= info.max_compute_invocations_per_workgroup
            && self.threads() <= info.max_compute_workgroup_size_x
            && self.shared_bytes() <= info.max_compute_workgroup_storage_size
    }

    /// This variant with vec4 loads and double buffering set as given.
    pub const fn with(self, vec4: bool, double_buffer: bool) -> Tile {
        Tile {
            vec4,
            double_buffer,
            ..self
        }
    }

    /// Every variant: each candidate with and without vec4 loads and double buffering.
    pub fn all() -> impl Iterator<Item = Tile> {
        CANDIDATES.iter().flat_map(|t| {
            [(false, false), (false, true), (true, false), (true, true)].map(|(v, d)| t.with(v, d))
        })
    }

    /// A short name, e.g. `128x128x8/8x8 vec4 db`; [`Tile::parse`] reads it back.
    pub fn name(&self) -> String {
        format!(
            "{}x{}x{}/{}x{}{}{}",
            self.bm,
            self.bn,
            self.bk,
            self.tm,
            self.tn,
            if self.vec4 { " vec4" } else { "" },
            if self.double_buffer { " db" } else { "" }
        )
    }

    /// The variant named by [`Tile::name`], if it is one of [`Tile::all`].
    pub fn parse(name: &str) -> Option<Tile> {
        Tile::all().find(|t| t.name() == name)
    }

    /// The lines of the template this variant replaces.
    fn block(&self) -> String {
        format!(
            "const BM: u32 = {}u;\nconst BN: u32 = {}u;\nconst BK: u32 = {}u;\n\
             const TM: u32 = {}u;\nconst TN: u32 = {}u;\nconst BUFS: u32 = {}u;\n\
             fn load_tile(blk: Block, k0: u32, buf: u32, lid: u32) {{\n    {}(blk, k0, buf, lid);\n}}\n",
            self.bm,
            self.bn,
            self.bk,
            self.tm,
            self.tn,
            if self.double_buffer { 2 } else { 1 },
            if self.vec4 { "load_vec4" } else { "load_scalar" },
        )
    }

    /// The WGSL source of this variant.
    pub fn source(&self) -> String {
        specialise(&MATMUL_TILED, &self.block())
    }

    /// This variant's kernel, compiled once per device on first use.
    pub(crate) fn kernel(&self) -> &'static Kernel {
        generated(&MATMUL_TILED_T, self.block())
    }
}
