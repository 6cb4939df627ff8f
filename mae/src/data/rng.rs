//! The host random numbers of a run. Every stream (epoch order, per-image augmentation,
//! masking) is derived from the run's seed and the stream's coordinates, never from a
//! generator advanced across steps, so any step can be rebuilt from `(seed, epoch, step)`
//! alone: that is what makes `--resume` exact.

/// Every random stream of the program, in one table so that a new one is seen beside the
/// others: a stream is `Rng::new(&[seed, ID, ...])` with its ID second.
///
/// | stream | coordinates | what it draws |
/// |---|---|---|
/// | [`ORDER`](streams::ORDER) | `[seed, 1, epoch]` | an epoch's data order (pretraining, fine-tuning, probing) |
/// | [`STEP`](streams::STEP) | `[seed, 2, step]` | a step's seed: its masks, drop paths, dropout |
/// | [`INIT`](streams::INIT) | `[seed, 3]` | a new model's weights |
/// | [`HEAD`](streams::HEAD) | `[seed, 4]` | a classifier's head |
/// | [`STATS`](streams::STATS) | `[seed, 5]` | the images normalisation statistics are computed from |
/// | [`PACK`](streams::PACK) | `[seed, 6]` | the order `mae shards` packs a folder in |
/// | (augmentation) | `[seed, epoch, image]` | an image's crop and flip ([`super::Loader`]) |
///
/// The augmentation stream has no ID: its second coordinate is the epoch, so image `k` of
/// epoch 1 draws from the coordinates of epoch `k`'s order. The two uses are unrelated
/// (a crop, a shuffle), and giving it an ID would change every crop of every run made so
/// far, so it stays as it is.
pub mod streams {
    /// An epoch's data order.
    pub const ORDER: u64 = 1;
    /// A step's seed.
    pub const STEP: u64 = 2;
    /// A new model's weights.
    pub const INIT: u64 = 3;
    /// A classifier's head.
    pub const HEAD: u64 = 4;
    /// The normalisation statistics' sample.
    pub const STATS: u64 = 5;
    /// `mae shards`' packing order.
    pub const PACK: u64 = 6;
}

/// SplitMix64 (Steele, Lea and Flood): small, fast and well mixed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    /// The stream at coordinates `parts`, e.g. `[seed, epoch, image_index]`.
    pub fn new(parts: &[u64]) -> Rng {
        Rng(parts
            .iter()
            .fold(0x6A09_E667_F3BC_C909, |s, &p| mix(s ^ mix(p))))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Uniform integer in `0..=n` (inclusive, as Python's `random.randint(0, n)`).
    pub fn int_upto(&mut self, n: usize) -> usize {
        ((self.uniform() * (n + 1) as f64) as usize).min(n)
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.int_upto(i));
        }
    }
}
