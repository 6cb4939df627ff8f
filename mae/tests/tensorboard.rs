//! TensorBoard event files: written, read back with every record's CRCs checked, and a
//! corrupted byte caught.

mod common;

use common::events::read_events;
use mae::tensorboard::EventWriter;

#[test]
fn events_read_back_with_their_crcs() {
    let dir = common::tmp("tensorboard", "events");
    let mut w = EventWriter::create(&dir, 7).unwrap();
    w.scalar("train/loss", 7, 1.25).unwrap();
    w.scalar("train/lr", 8, 3e-4).unwrap();
    let png = [137u8, 80, 78, 71, 13, 10, 26, 10, 0, 1, 2];
    w.image("reconstruction", 9, &png, (112, 448, 3)).unwrap();
    w.flush().unwrap();
    let name = w.path().file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("events.out.tfevents."), "{name}");

    let events = read_events(w.path()).unwrap();
    assert_eq!(events.len(), 5);
    assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
    assert_eq!((events[1].step, events[1].session_log), (7, Some(1)));
    assert_eq!(events[2].scalars, [("train/loss".to_string(), 1.25)]);
    assert_eq!(events[3].step, 8);
    assert_eq!(events[3].scalars, [("train/lr".to_string(), 3e-4f32)]);
    assert_eq!(
        events[4].images,
        [("reconstruction".to_string(), 112, 448, 3, png.len())]
    );
    assert!(events.iter().all(|e| e.wall_time > 1.6e9), "{events:?}");

    // One flipped bit anywhere is caught.
    let mut bytes = std::fs::read(w.path()).unwrap();
    let last = bytes.len() - 9;
    bytes[last] ^= 1;
    let corrupt = dir.join("corrupt.tfevents");
    std::fs::write(&corrupt, &bytes).unwrap();
    let e = read_events(&corrupt).unwrap_err();
    assert!(e.contains("bad data CRC"), "{e}");
}
