//! The k-NN monitor: whether pretraining helps while it runs. The encoder's features (the
//! cls token after its final norm, from the whole image, nothing masked) of a fixed subset
//! of the training images form a memory bank; each image of a fixed held-out subset is
//! classified by a weighted vote of its `k = 20` nearest bank images by cosine similarity,
//! each weighing `exp(similarity / 0.07)`, the usual self-supervised monitor (InstDisc,
//! DINO). Its top-1 is what [`Monitor::top1`] reports.

use std::path::Path;
use std::sync::Arc;

use engine::Tensor;
use nn::Ctx;

use crate::classify::{open_labelled, EvalView};
use crate::data::{Dataset, Normalize};
use crate::{Error, MaskedAutoencoder};

/// Neighbours that vote.
pub const K: usize = 20;
/// Temperature of the votes' weights.
pub const TEMPERATURE: f32 = 0.07;

/// The subsets a run's monitor classifies.
pub struct Monitor {
    train: Arc<Dataset>,
    test: Arc<Dataset>,
    bank: usize,
    queries: usize,
    classes: usize,
}

impl Monitor {
    /// The monitor of labelled `data`: the first `bank` training images and the first
    /// `queries` held-out ones (fewer when the splits are smaller).
    ///
    /// # Errors
    /// [`Error::Data`] when the data has no labels or no held-out split.
    pub fn new(data: &Path, bank: usize, queries: usize) -> Result<Monitor, Error> {
        let labelled = open_labelled(data)?;
        Ok(Monitor {
            bank: bank.min(labelled.train.len()),
            queries: queries.min(labelled.test.len()),
            train: labelled.train,
            test: labelled.test,
            classes: labelled.classes,
        })
    }

    /// Images the monitor encodes each time: bank and queries.
    pub fn images(&self) -> usize {
        self.bank + self.queries
    }

    /// Weighted k-NN top-1 in percent of `model`'s encoder on the held-out subset.
    ///
    /// # Errors
    /// Unreadable data or engine failures.
    pub fn top1(
        &self,
        model: &MaskedAutoencoder,
        normalize: &Normalize,
        workers: usize,
    ) -> Result<f64, Error> {
        let (bank, bank_labels) = features(model, &self.train, self.bank, normalize, workers)?;
        let (queries, labels) = features(model, &self.test, self.queries, normalize, workers)?;
        let dim = model.config.dim;
        Ok(weighted_knn_top1(
            (&bank, &bank_labels),
            (&queries, &labels),
            dim,
            self.classes,
        ))
    }
}

/// The L2-normalised cls features `(n, D)` of the first `n` images of `data` (evaluation
/// view) and their labels.
fn features(
    model: &MaskedAutoencoder,
    data: &Arc<Dataset>,
    n: usize,
    normalize: &Normalize,
    workers: usize,
) -> Result<(Vec<f32>, Vec<u32>), Error> {
    let c = &model.config;
    let device = model.cls_token.device();
    let view = EvalView {
        device,
        shape: (c.image_size, c.channels),
        normalize,
        workers,
    };
    let (mut feats, mut labels) = (Vec::new(), Vec::new());
    view.for_each_batch(data, (0..n).collect(), |imgs, batch_labels| {
        // Nothing masked: every patch is seen, and the cls token ignores their order.
        let noise = Tensor::zeros(device, &[imgs.shape()[0], c.num_patches()])?;
        let (latent, _, _) = model.forward_encoder(imgs, 0.0, &noise, &mut Ctx::eval())?;
        let cls = latent.narrow(1, 0, 1)?.squeeze(1)?;
        let norm = cls.mul(&cls)?.sum(-1, true)?.sqrt()?.add_scalar(1e-12)?;
        feats.extend(cls.div(&norm)?.to_vec()?);
        labels.extend(batch_labels);
        Ok(())
    })?;
    Ok((feats, labels))
}

/// Top-1 in percent of a weighted k-NN vote: each query takes its [`K`] most similar bank
/// rows (by dot product of the normalised `dim`-wide rows; ties to the lower index) and
/// predicts the class with the largest sum of `exp(similarity / TEMPERATURE)` (ties to the
/// lower class).
pub fn weighted_knn_top1(
    (bank, bank_labels): (&[f32], &[u32]),
    (queries, labels): (&[f32], &[u32]),
    dim: usize,
    classes: usize,
) -> f64 {
    if labels.is_empty() {
        return 0.0;
    }
    let mut correct = 0;
    for (q, &label) in queries.chunks_exact(dim).zip(labels) {
        let mut sims: Vec<(f32, usize)> = bank
            .chunks_exact(dim)
            .enumerate()
            .map(|(i, b)| (q.iter().zip(b).map(|(x, y)| x * y).sum(), i))
            .collect();
        let k = K.min(sims.len());
        sims.select_nth_unstable_by(k.saturating_sub(1), |a, b| {
            b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
        });
        let mut votes = vec![0.0f64; classes];
        for &(s, i) in &sims[..k] {
            votes[bank_labels[i] as usize] += ((s / TEMPERATURE) as f64).exp();
        }
        let best = (0..classes)
            .max_by(|&a, &b| votes[a].total_cmp(&votes[b]).then(b.cmp(&a)))
            .unwrap_or(0);
        correct += (best == label as usize) as usize;
    }
    100.0 * correct as f64 / labels.len() as f64
}

#[cfg(test)]
mod tests {
    use super::weighted_knn_top1;

    /// A normalised 2-D feature at `angle` degrees.
    fn at(angle: f32) -> [f32; 2] {
        let r = angle.to_radians();
        [r.cos(), r.sin()]
    }

    #[test]
    fn votes_follow_the_nearest_and_their_weights() {
        // Class 0 around 0 degrees, class 1 around 90; 30 bank rows each.
        let mut bank = Vec::new();
        let mut labels = Vec::new();
        for i in 0..30 {
            bank.extend(at(i as f32 * 0.5));
            labels.push(0);
            bank.extend(at(90.0 - i as f32 * 0.5));
            labels.push(1);
        }
        let queries: Vec<f32> = [5.0, 80.0, 40.0, 50.0]
            .iter()
            .flat_map(|&a| at(a))
            .collect();
        let top1 = weighted_knn_top1((&bank, &labels), (&queries, &[0, 1, 0, 1]), 2, 2);
        assert_eq!(top1, 100.0);
        // Wrong labels for the two ambiguous middle queries: half right.
        let top1 = weighted_knn_top1((&bank, &labels), (&queries, &[0, 1, 1, 0]), 2, 2);
        assert_eq!(top1, 50.0);
        // 20 neighbours of class 1 far away outvote nothing near: a query at 10 degrees
        // with a bank of one class-0 row there and 20 class-1 rows at 90 goes to class 1
        // only through weight, which exp(cos / 0.07) gives to the near row.
        let mut bank = at(10.0).to_vec();
        bank.extend((0..20).flat_map(|_| at(90.0)));
        let mut labels = vec![1; 21];
        labels[0] = 0;
        let top1 = weighted_knn_top1((&bank, &labels), (&at(10.0), &[0]), 2, 2);
        assert_eq!(top1, 100.0, "one near neighbour outweighs twenty far ones");
    }
}
