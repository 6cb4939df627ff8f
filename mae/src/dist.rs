//! Data parallelism: the processes of one run (`mpirun -np N mae pretrain ...`), through MPI
//! (Open MPI, via the `mpi` crate) when the program is built with the `distributed`
//! feature, else one process.
//!
//! Every rank holds the whole model and the same optimizer state. An iteration's global
//! batch is the one a single process would take with N times the per-rank batch (the same
//! seed-derived order, crops, flips and masking noise); rank r takes the r-th slice of it.
//! Before every optimizer step the gradients are copied to the host in a few large
//! buckets, summed across ranks with MPI's all-reduce, divided by N and copied back, so
//! every rank takes the same AdamW step from the mean gradient: the gradient of the global
//! batch's mean loss, since every image has the same number of masked patches (or, when
//! fine-tuning, one label). WebGPU cannot share buffers between devices, so gradients
//! travel through host memory.

use engine::{Gradients, Tensor};

use crate::Error;

/// Gradients travel in buckets of at most this many floats (64 MiB): few enough copies and
/// collective calls per step, and a bounded host buffer.
const BUCKET_FLOATS: usize = 16 << 20;

/// The processes of this run.
pub struct Dist {
    rank: usize,
    size: usize,
    local_rank: usize,
    #[cfg(feature = "distributed")]
    mpi: Option<Mpi>,
}

#[cfg(feature = "distributed")]
struct Mpi {
    // Finalises MPI when dropped, after the communicator.
    world: mpi::topology::SimpleCommunicator,
    _universe: mpi::environment::Universe,
}

/// Whether an MPI launcher (Open MPI's `mpirun`, MPICH's Hydra, PMIx) started this
/// process as one of several.
fn launched_by_mpi() -> bool {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .any(|n| n.parse::<usize>().is_ok_and(|n| n > 1))
}

impl Dist {
    /// One process alone.
    pub fn single() -> Dist {
        Dist {
            rank: 0,
            size: 1,
            local_rank: 0,
            #[cfg(feature = "distributed")]
            mpi: None,
        }
    }

    /// The processes of this run: MPI's world when an MPI launcher started several, else
    /// one process.
    ///
    /// # Errors
    /// [`Error::Setup`] when launched by MPI but built without the `distributed` feature,
    /// or when MPI cannot be initialised.
    pub fn init() -> Result<Dist, Error> {
        if !launched_by_mpi() {
            return Ok(Dist::single());
        }
        Dist::init_mpi()
    }

    #[cfg(not(feature = "distributed"))]
    fn init_mpi() -> Result<Dist, Error> {
        Err(Error::Setup(
            "started by mpirun, but this mae was built without MPI: build it with \
             `cargo build --release -p mae --features distributed`"
                .into(),
        ))
    }

    #[cfg(feature = "distributed")]
    fn init_mpi() -> Result<Dist, Error> {
        use mpi::topology::Communicator;
        let universe =
            mpi::initialize().ok_or_else(|| Error::Setup("MPI could not be initialised".into()))?;
        let world = universe.world();
        // Ranks on the same machine share its GPUs: the local rank picks one.
        let local_rank = world.split_shared(0).rank() as usize;
        Ok(Dist {
            rank: world.rank() as usize,
            size: world.size() as usize,
            local_rank,
            mpi: Some(Mpi {
                world,
                _universe: universe,
            }),
        })
    }

    /// This process's rank, from 0.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// How many processes train together.
    pub fn size(&self) -> usize {
        self.size
    }

    /// This process's rank among those on its machine: which of its GPUs it takes.
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    /// Rank 0: the one that writes checkpoints, metrics, pictures and progress.
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// Sum `values` over every rank, in place.
    pub fn sum(&self, values: &mut [f64]) {
        #[cfg(not(feature = "distributed"))]
        let _ = values;
        #[cfg(feature = "distributed")]
        if let Some(m) = &self.mpi {
            use mpi::collective::{CommunicatorCollectives, SystemOperation};
            let send = values.to_vec();
            crate::run::watchdog::waiting(|| {
                m.world
                    .all_reduce_into(&send[..], values, SystemOperation::sum())
            });
        }
    }

    /// Whether any rank passes `true`.
    pub fn any(&self, flag: bool) -> bool {
        let mut v = [flag as u8 as f64];
        self.sum(&mut v);
        v[0] > 0.0
    }

    /// Check that every rank passes the same `text` (its settings, its data, its model): a
    /// run whose ranks disagree would train nonsense. `text` is made only when there are
    /// several processes.
    ///
    /// # Errors
    /// [`Error::Setup`] naming the ranks that differ from rank 0, on every rank.
    pub fn check_same(&self, what: &str, text: impl FnOnce() -> String) -> Result<(), Error> {
        let _ = (what, &text);
        #[cfg(feature = "distributed")]
        if let Some(m) = &self.mpi {
            use mpi::collective::CommunicatorCollectives;
            let mut hash = engine::Fnv::new();
            hash.add(text().as_bytes());
            let hash = hash.finish();
            let mut all = vec![0u64; self.size];
            crate::run::watchdog::waiting(|| m.world.all_gather_into(&hash, &mut all[..]));
            let differ: Vec<String> = (1..self.size)
                .filter(|&r| all[r] != all[0])
                .map(|r| r.to_string())
                .collect();
            if !differ.is_empty() {
                return Err(Error::Setup(format!(
                    "ranks {} have other {what} than rank 0: every rank must run the same command",
                    differ.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// Stop every rank now, after a failure that only this rank met (a file it could not
    /// read, an I/O error): the others would otherwise wait for it forever. Prints `error`
    /// with this rank's number and ends the whole job with `code`.
    pub fn abort(&self, error: &Error) -> ! {
        let line = format!("error: rank {}: {error}", self.rank);
        abort_job(&line, error.exit_code() as i32)
    }

    /// Replace the gradient of each of `params` by its mean over the ranks: gathered on the
    /// device into buckets, read back, summed with MPI's all-reduce, scaled by `1 / N` and
    /// written back. A parameter without a gradient is an error (the optimizer would refuse
    /// it anyway).
    ///
    /// # Errors
    /// [`Error::Engine`] for an engine failure.
    pub fn average_gradients(&self, grads: &mut Gradients, params: &[Tensor]) -> Result<(), Error> {
        if self.size == 1 {
            return Ok(());
        }
        let mut start = 0;
        while start < params.len() {
            let mut end = start;
            let mut floats = 0;
            while end < params.len()
                && (end == start || floats + params[end].numel() <= BUCKET_FLOATS)
            {
                floats += params[end].numel();
                end += 1;
            }
            let bucket = &params[start..end];
            let flat: Vec<Tensor> = bucket
                .iter()
                .map(|p| grads.expect(p).and_then(|g| g.reshape(&[g.numel()])))
                .collect::<Result<_, _>>()?;
            let views: Vec<&Tensor> = flat.iter().collect();
            let host = Tensor::concat(&views, 0)?.to_vec()?;
            let summed = self.sum_f32(&host);
            let scale = 1.0 / self.size as f32;
            let mut offset = 0;
            for p in bucket {
                let n = p.numel();
                let mean: Vec<f32> = summed[offset..offset + n]
                    .iter()
                    .map(|v| v * scale)
                    .collect();
                grads.insert(p, Tensor::from_slice(p.device(), &mean, p.shape())?)?;
                offset += n;
            }
            start = end;
        }
        Ok(())
    }

    /// `values` summed over every rank (MPI's all-reduce of f32).
    fn sum_f32(&self, values: &[f32]) -> Vec<f32> {
        #[cfg(feature = "distributed")]
        if let Some(m) = &self.mpi {
            use mpi::collective::{CommunicatorCollectives, SystemOperation};
            let mut out = vec![0f32; values.len()];
            crate::run::watchdog::waiting(|| {
                m.world
                    .all_reduce_into(values, &mut out[..], SystemOperation::sum())
            });
            return out;
        }
        values.to_vec()
    }

    /// This rank's share of an epoch's `order` cut into global batches of `per_rank *
    /// size` images: for each global batch, the `rank`-th slice of `per_rank` images. A
    /// loader of batch `per_rank` over the result gives this rank's slice of every
    /// iteration's global batch.
    pub fn shard(&self, order: &[usize], per_rank: usize) -> Vec<usize> {
        let global = per_rank * self.size;
        order
            .chunks_exact(global)
            .flat_map(|b| {
                b[self.rank * per_rank..(self.rank + 1) * per_rank]
                    .iter()
                    .copied()
            })
            .collect()
    }

    /// A line for the log: `rank 1 of 2 on llvmpipe (...)`, or nothing for one process.
    pub fn describe(&self, adapter: &str) -> Option<String> {
        (self.size > 1).then(|| {
            format!(
                "rank {} of {} (local rank {}) on {adapter}",
                self.rank, self.size, self.local_rank
            )
        })
    }
}

/// Print `line` and end the job with `code`: under MPI every process of it (MPI's abort),
/// else this process. Callable from any thread, a panic hook's included.
pub fn abort_job(line: &str, code: i32) -> ! {
    say(line);
    #[cfg(feature = "distributed")]
    if mpi::environment::is_initialized() && !mpi::environment::is_finalized() {
        use mpi::topology::Communicator;
        mpi::topology::SimpleCommunicator::world().abort(code);
    }
    std::process::exit(code)
}

/// From now on a panic, the last line of defence against a bug, is one line and exit code
/// 1, and under MPI it ends every process of the job rather than leave the others waiting
/// in a collective operation.
pub fn end_the_job_on_panic() {
    std::panic::set_hook(Box::new(|info| {
        let what = panic_message(info.payload());
        let at = info
            .location()
            .map_or(String::new(), |l| format!(" at {l}"));
        let line = format!("error: internal error (a bug; please report it): {what}{at}");
        abort_job(&line.replace('\n', " "), 1)
    }));
}

/// What a panic said, when it said it with text.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    match (
        payload.downcast_ref::<&str>(),
        payload.downcast_ref::<String>(),
    ) {
        (Some(s), _) => s.to_string(),
        (_, Some(s)) => s.clone(),
        _ => "a panic without a message".into(),
    }
}

/// Print `line` to stderr in one write: stderr is unbuffered and an MPI launcher
/// interleaves the ranks' writes, so a line written in pieces (`eprintln!` writes its
/// arguments and the newline separately) can be split by another rank's.
pub fn say(line: &str) {
    let _ = std::io::Write::write_all(&mut std::io::stderr(), format!("{line}\n").as_bytes());
}
