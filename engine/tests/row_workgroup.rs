//! The row kernels at every workgroup width: GPUs run them 64 wide, lavapipe 8 wide, so
//! this process forces the other widths through `ENGINE_ROW_WORKGROUP` and checks them
//! against the CPU reference here as well.

mod common;
use common::{assert_close, data};
use engine::reference::{self, Reduce};
use engine::{Device, Error, Tensor};

#[test]
fn row_kernels_agree_at_every_width() {
    for width in [16u32, 32, 64] {
        std::env::set_var("ENGINE_ROW_WORKGROUP", width.to_string());
        let d = Device::new().unwrap();
        assert_eq!(d.row_workgroup(), width);
        for (r, c) in [(3usize, 7usize), (2, 197), (1, 1000), (300, 40)] {
            let hx = data(r * c, width as u64);
            let x = Tensor::from_slice(&d, &hx, &[r, c]).unwrap();
            let what = format!("width {width}, {r}x{c}");
            assert_close(
                &x.softmax().unwrap().to_vec().unwrap(),
                &reference::softmax(&hx, c),
                1e-6,
                1e-5,
                &what,
            );
            let hw = data(c, 1);
            let hb = data(c, 2);
            let w = Tensor::from_slice(&d, &hw, &[c]).unwrap();
            let b = Tensor::from_slice(&d, &hb, &[c]).unwrap();
            let ln = x.layer_norm(&w, &b, 1e-5).unwrap().to_vec().unwrap();
            assert_close(
                &ln,
                &reference::layer_norm(&hx, &hw, &hb, 1e-5),
                2e-5,
                2e-5,
                &what,
            );
            let t: Vec<u32> = (0..r as u32).map(|i| i % c as u32).collect();
            let tt = Tensor::from_slice_u32(&d, &t, &[r]).unwrap();
            let ce = x.cross_entropy(&tt, 0.1).unwrap().to_vec().unwrap();
            assert_close(
                &ce,
                &reference::cross_entropy(&hx, &t, c, 0.1),
                1e-5,
                1e-5,
                &what,
            );
            for (how, axis, got) in [
                (Reduce::Sum, 1, x.sum(1, false).unwrap()),
                (Reduce::Var(true), 1, x.var(1, false, true).unwrap()),
                (Reduce::Max, 0, x.max(0, false).unwrap()),
                (Reduce::Sum, 0, x.sum(0, false).unwrap()),
            ] {
                let (want, _) = reference::reduce(&hx, &[r, c], axis, how);
                assert_close(&got.to_vec().unwrap(), &want, 2e-5, 2e-5, &what);
            }
            let (want, _) = reference::reduce(&hx, &[r, c], 1, Reduce::Argmax);
            let got = x.argmax(1, false).unwrap().to_vec_u32().unwrap();
            assert_eq!(
                got,
                want.iter().map(|&v| v as u32).collect::<Vec<_>>(),
                "{what}"
            );
        }
    }
    std::env::set_var("ENGINE_ROW_WORKGROUP", "12");
    let e = Device::new().unwrap_err();
    assert!(
        matches!(e, Error::Device(_)) && e.to_string().contains("expected 8, 16, 32 or 64"),
        "{e}"
    );
    std::env::remove_var("ENGINE_ROW_WORKGROUP");
}
