//! The `mae` command-line program: parsing and dispatch. Each command lives in the library.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use mae::dist::Dist;
use mae::run::Given;
use mae::{finetune, forward, linprobe, pack, pretrain, visualize, Error};

#[derive(Parser)]
#[command(
    name = "mae",
    version,
    about = "Masked Autoencoder pretraining of Vision Transformers on any GPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Pretrain an MAE on unlabelled images (the main job). With no options: the small
    /// 28x28 patch-7 preset on 19,200 Fashion-MNIST images, a few minutes without a GPU.
    /// Options left out follow the reference recipe scaled to the model (shown in
    /// brackets where it differs from the default).
    #[command(args_override_self = true)]
    Pretrain(Box<pretrain::Args>),
    /// Draw reconstructions: per image a row of original | masked | reconstruction |
    /// reconstruction with the visible patches pasted back. For norm_pix_loss models each
    /// predicted patch is de-normalised with the mean and variance of the true patch.
    Visualize(visualize::Args),
    /// Linear probe: freeze an encoder, train a linear head (BatchNorm without affine, then
    /// Linear) on its cached features with SGD, and report top-1 on the held-out split.
    /// Prints and writes (result.json) `{"task","init","top1","epochs"}`.
    Linprobe(Box<linprobe::Args>),
    /// Fine-tune a ViT classifier initialised from an encoder (global pool with fc_norm, new
    /// head; AdamW with layer-wise lr decay, drop path, label smoothing, warmup + cosine),
    /// reporting top-1 on the held-out split after every epoch. Prints and writes
    /// (result.json) `{"task","init","top1","epochs"}`. Options left out follow the recipe
    /// scaled to the model.
    Finetune(Box<finetune::Args>),
    /// Run a model on given pixels (and noise) and write loss, logits, mask, ids_restore and
    /// optionally every parameter gradient: the parity check against transformers.
    Forward(forward::Args),
    /// Pack an image folder into webdataset shards (tar files of `{key}.{ext}` members and
    /// `{key}.cls` classes), which `--data 'DIR/shard-{000000..000009}.tar'` reads.
    Shards(pack::Args),
}

fn main() -> ExitCode {
    mae::dist::end_the_job_on_panic();
    let matches = match Cli::command().try_get_matches() {
        Ok(m) => m,
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            e.exit() // `mae` alone: the help, exit 2
        }
        Err(e) if e.use_stderr() => return usage_error(&e),
        Err(e) => e.exit(), // --help, --version
    };
    let given = Given::of(matches.subcommand().expect("a subcommand").1);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let dist = match Dist::init() {
        Ok(d) => d,
        Err(e) => return fail(&e),
    };
    let result = match &cli.command {
        Command::Pretrain(a) => pretrain::command(a, &given, &dist),
        Command::Visualize(a) => visualize::command(a),
        Command::Linprobe(a) => linprobe::command(a),
        Command::Finetune(a) => finetune::command(a, &given, &dist),
        Command::Forward(a) => forward::command(a),
        Command::Shards(a) => pack::command(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Every process sees a diverging loss (it is reduced across them), and every
        // process stops at a signal's request at the same step: one line, from rank 0.
        Err(e @ (Error::NonFinite { .. } | Error::Stopped { .. })) if !dist.is_main() => {
            ExitCode::from(e.exit_code())
        }
        Err(e @ (Error::NonFinite { .. } | Error::Stopped { .. })) => fail(&e),
        // A failure of one process: stop them all rather than leave them waiting.
        Err(e) if dist.size() > 1 => dist.abort(&e),
        Err(e) => fail(&e),
    }
}

/// One line and the error's exit code.
fn fail(e: &Error) -> ExitCode {
    mae::dist::say(&format!("error: {e}"));
    ExitCode::from(e.exit_code())
}

/// A command line clap refused, in one line (with clap's tip, when it has one) and exit
/// code 2, as every other bad input.
fn usage_error(e: &clap::Error) -> ExitCode {
    let text = e.render().to_string();
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let mut line = lines
        .next()
        .unwrap_or("error: bad command line")
        .to_string();
    if let Some(tip) = lines.find(|l| l.starts_with("tip:")) {
        line = format!("{line}; {tip}");
    }
    mae::dist::say(&format!("{line} (see --help)"));
    ExitCode::from(2)
}
