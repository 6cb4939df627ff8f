//! The run layer's settings: one type per command that is the clap arguments, the recipe
//! scaled to the model, and the JSON a checkpoint saves; a new run takes the options given
//! over the recipe, a resumed run its saved settings with only `--epochs` changed.

mod common;

use clap::{Args, CommandFactory, FromArgMatches, Parser};
use mae::run::{Given, Resumed};
use mae::{finetune, pretrain, MaeConfig};

#[derive(Parser)]
struct Pretrain {
    #[command(flatten)]
    args: pretrain::Args,
}

#[derive(Parser)]
struct Finetune {
    #[command(flatten)]
    args: finetune::Args,
}

/// The parsed arguments and the options given of `mae pretrain ARGS`.
fn parse_pretrain(args: &[&str]) -> (pretrain::Args, Given) {
    let matches = Pretrain::command().get_matches_from([&["pretrain"], args].concat());
    let given = Given::of(&matches);
    (Pretrain::from_arg_matches(&matches).unwrap().args, given)
}

fn settle_pretrain(args: &[&str]) -> pretrain::Settings {
    let (args, given) = parse_pretrain(args);
    let recipe = |p: &pretrain::Settings| {
        Ok(p.clone()
            .scaled(&mae::config::config_from(&p.model).unwrap()))
    };
    let resume = args.resume.as_deref();
    let single = mae::dist::Dist::single();
    given
        .settle(&args.settings, resume, recipe, &single)
        .unwrap()
        .0
}

#[test]
fn a_new_run_takes_the_options_given_over_the_recipe() {
    // The small preset: the command line's defaults are its recipe.
    let s = settle_pretrain(&["--blr", "1e-3"]);
    assert_eq!((s.blr, s.epochs, s.accum_iter), (1e-3, 1, 1));
    assert_eq!(
        (s.limit, s.knn_every, s.norm_pix_loss),
        (Some(19_200), 1, false)
    );
    assert_eq!(
        s,
        pretrain::Settings {
            blr: 1e-3,
            ..pretrain::Settings::recipe(
                "mae_tiny_28_patch7",
                &MaeConfig::mae_tiny_28_patch7(),
                s.data.clone()
            )
        }
    );

    // ViT-B: what is left out follows the paper's recipe; what is given wins, including a
    // value equal to the small default (`--accum-iter 1`) and `--norm-pix-loss false`.
    let base = ["--model", "mae_vit_base_patch16"];
    let s = settle_pretrain(&base);
    assert_eq!(
        (s.epochs, s.accum_iter, s.blr, s.warmup_epochs),
        (800, 64, 1.5e-4, 40.0)
    );
    assert_eq!(
        (s.limit, s.save_every, s.knn_every, s.norm_pix_loss),
        (None, 20, 0, true)
    );
    let s = settle_pretrain(
        &[
            &base[..],
            &[
                "--accum-iter",
                "1",
                "--norm-pix-loss",
                "false",
                "--epochs",
                "3",
            ],
        ]
        .concat(),
    );
    assert_eq!(
        (s.epochs, s.accum_iter, s.blr, s.norm_pix_loss),
        (3, 1, 1.5e-4, false)
    );
    let s = settle_pretrain(&[&base[..], &["--norm-pix-loss", "--mask-ratio", "0.6"]].concat());
    assert_eq!((s.norm_pix_loss, s.mask_ratio), (true, 0.6));

    // Fine-tuning: ViT-L's layer decay and drop path, the given blr.
    let matches = Finetune::command().get_matches_from([
        "finetune",
        "--model",
        "mae_vit_large_patch16",
        "--blr",
        "2e-3",
    ]);
    let given = Given::of(&matches);
    let args = Finetune::from_arg_matches(&matches).unwrap().args;
    let recipe = |p: &finetune::Settings| Ok(p.clone().scaled(&MaeConfig::mae_vit_large_patch16()));
    let (s, _) = given
        .settle(&args.settings, None, recipe, &mae::dist::Dist::single())
        .unwrap();
    assert_eq!(
        (s.blr, s.layer_decay, s.drop_path, s.epochs),
        (2e-3, 0.75, 0.2, 100)
    );
}

#[test]
fn a_resumed_run_keeps_its_saved_settings_but_epochs() {
    let dir = common::tmp("settings", "resume");
    let saved = pretrain::Settings {
        blr: 2.5e-3,
        mask_ratio: 0.6,
        ranks: 2,
        ..settle_pretrain(&[])
    };
    let state = serde_json::json!({
        "epoch": 1, "step": 300, "optimizer_step": 300, "settings": saved,
    });
    std::fs::write(dir.join("trainer_state.json"), state.to_string()).unwrap();
    let dir = dir.to_str().unwrap();

    let s = settle_pretrain(&[
        "--resume",
        dir,
        "--blr",
        "9",
        "--mask-ratio",
        "0.1",
        "--epochs",
        "4",
    ]);
    assert_eq!(
        s,
        pretrain::Settings {
            epochs: 4,
            ..saved.clone()
        }
    );
    let s = settle_pretrain(&["--resume", dir]);
    assert_eq!(s, saved, "saved settings, bit for bit");

    let resumed = Resumed::<pretrain::Settings>::read(std::path::Path::new(dir)).unwrap();
    assert_eq!((resumed.state.epoch, resumed.state.step), (1, 300));
}

#[test]
fn settings_round_trip_through_their_json() {
    let s = pretrain::Settings {
        mask_ratio: 0.1 + 0.2, // a double that needs all 17 digits
        limit: None,
        ..settle_pretrain(&[])
    };
    let text = serde_json::to_string(&s).unwrap();
    assert_eq!(
        serde_json::from_str::<pretrain::Settings>(&text).unwrap(),
        s
    );
    // Every option but the invocation's is a field of the saved JSON, under its name.
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let invocation = mae::run::Invocation::augment_args(clap::Command::new("run"));
    let of_run: Vec<&str> = invocation
        .get_arguments()
        .map(|a| a.get_id().as_str())
        .chain([
            "resume",
            "checkpoint_activations",
            "dry_run",
            "stall_timeout",
        ])
        .collect();
    for arg in Pretrain::command().get_arguments() {
        let id = arg.get_id().as_str();
        assert!(
            of_run.contains(&id) || json.get(id).is_some(),
            "--{id} is not saved"
        );
    }
}

/// The training loop reads its schedule from each command's settings by field name (through
/// JSON): a field renamed in one of them must fail here, not at run time.
#[test]
fn the_schedule_reads_every_training_command_by_field_name() {
    let (args, _) = parse_pretrain(&[
        "--epochs",
        "7",
        "--limit",
        "321",
        "--batch-size",
        "5",
        "--accum-iter",
        "3",
        "--blr",
        "0.25",
        "--min-lr",
        "0.125",
        "--warmup-epochs",
        "1.5",
        "--seed",
        "11",
        "--save-every",
        "2",
        "--precision",
        "f16-mixed",
    ]);
    let p = &args.settings;
    let s = mae::run::Schedule::of(p);
    assert_eq!(
        (
            s.epochs,
            s.limit,
            s.batch_size,
            s.ranks,
            s.accum_iter,
            s.seed,
            s.save_every
        ),
        (7, Some(321), 5, 1, 3, 11, 2)
    );
    assert_eq!((s.blr, s.min_lr, s.warmup_epochs), (0.25, 0.125, 1.5));
    assert_eq!(s.precision, mae::run::Precision::F16Mixed);
    let matches = Finetune::command().get_matches_from([
        "finetune",
        "--model",
        "m",
        "--epochs",
        "9",
        "--batch-size",
        "6",
        "--accum-iter",
        "4",
        "--blr",
        "0.5",
        "--seed",
        "13",
        "--limit",
        "99",
    ]);
    let f = Finetune::from_arg_matches(&matches).unwrap().args.settings;
    let s = mae::run::Schedule::of(&f);
    assert_eq!(
        (s.epochs, s.limit, s.batch_size, s.accum_iter, s.seed, s.blr),
        (9, Some(99), 6, 4, 13, 0.5)
    );
}
