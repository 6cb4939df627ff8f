//! Bad input gives a clear error naming the op and the shapes, never a panic, a wgpu
//! validation error or a silently wrong result.

mod common;
use common::*;
use engine::{DType, Device, Error, Tensor};

fn message(r: engine::Result<Tensor>) -> String {
    r.expect_err("should fail").to_string()
}

#[test]
fn shape_mismatches_name_op_and_shapes() {
    let d = dev();
    let a = Tensor::zeros(&d, &[3, 4]).unwrap();
    let b = Tensor::zeros(&d, &[5]).unwrap();
    assert_eq!(
        message(a.add(&b)),
        "add: shapes [3, 4] and [5] do not broadcast"
    );
    assert_eq!(
        message(a.matmul(&a)),
        "matmul: inner sizes differ: [3, 4] x [3, 4]"
    );
    assert!(message(a.matmul(&b)).starts_with("matmul: needs operands of rank 2"));
    assert_eq!(
        message(a.reshape(&[5, 2])),
        "reshape: cannot view shape [3, 4] as [5, 2]"
    );
    assert!(message(Tensor::from_slice(&d, &[1.0, 2.0], &[3]))
        .contains("2 values cannot fill shape [3]"));
    let w = Tensor::ones(&d, &[3]).unwrap();
    assert!(message(a.layer_norm(&w, &w, 1e-5))
        .contains("weight of shape [3] does not match the last axis of input [3, 4]"));
    assert!(message(Tensor::concat(&[&a, &b], 0)).starts_with("concat: shapes"));
    assert!(message(a.narrow(1, 2, 3)).contains("range 2..5 leaves axis 1"));
    assert!(message(a.permute(&[0, 0])).contains("is not a permutation"));
    assert!(message(a.broadcast_to(&[4, 4])).contains("does not broadcast to [4, 4]"));
    assert!(message(a.dropout(1.0, 0)).contains("probability must be in [0, 1)"));
    let t = Tensor::zeros(&d, &[2])
        .unwrap()
        .to_dtype(DType::U32)
        .unwrap();
    assert!(message(a.cross_entropy(&t, 0.0)).contains("needs logits (N, C) and targets (N,)"));
}

#[test]
fn axes_out_of_range() {
    let a = Tensor::zeros(&dev(), &[3, 4]).unwrap();
    let e = a.sum(2, false).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Axis {
                op: "sum",
                axis: 2,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        "sum: axis 2 is out of range for a tensor of shape [3, 4]"
    );
    assert!(a.softmax().is_ok());
    assert!(matches!(
        a.transpose(0, -3).unwrap_err(),
        Error::Axis { .. }
    ));
    assert!(matches!(a.unsqueeze(3).unwrap_err(), Error::Axis { .. }));
    assert!(a.unsqueeze(2).is_ok() && a.unsqueeze(-1).is_ok());
    assert!(matches!(
        a.gather(5, &Tensor::arange_u32(&dev(), 3).unwrap())
            .unwrap_err(),
        Error::Axis { .. }
    ));
    assert!(matches!(
        a.max(0, false).unwrap().max(-2, false).unwrap_err(),
        Error::Axis { .. }
    ));
    let e = Tensor::zeros(&dev(), &[0, 3])
        .unwrap()
        .max(0, false)
        .unwrap_err();
    assert!(
        e.to_string().contains("cannot reduce the empty axis"),
        "{e}"
    );
}

#[test]
fn dtype_mismatches() {
    let d = dev();
    let f = Tensor::zeros(&d, &[3]).unwrap();
    let u = Tensor::arange_u32(&d, 3).unwrap();
    let e = f.add(&u).unwrap_err();
    assert_eq!(
        e.to_string(),
        "add: expected F32 tensor, got U32 (shape [3])"
    );
    assert!(matches!(
        u.exp().unwrap_err(),
        Error::DType { op: "exp", .. }
    ));
    assert!(matches!(
        f.gather(0, &f).unwrap_err(),
        Error::DType { op: "gather", .. }
    ));
    assert!(matches!(
        Tensor::where_cond(&f, &f, &f).unwrap_err(),
        Error::DType { op: "where", .. }
    ));
    assert!(matches!(u.to_vec().unwrap_err(), Error::DType { .. }));
    assert!(matches!(f.to_vec_u32().unwrap_err(), Error::DType { .. }));
    assert!(matches!(u.matmul(&u).unwrap_err(), Error::DType { .. }));
}

#[test]
fn tensor_larger_than_the_adapter_allows() {
    let d = dev();
    let limit = d
        .info()
        .max_storage_buffer_binding_size
        .min(d.info().max_buffer_size);
    let n = (limit / 4 + 1) as usize;
    let e = Tensor::zeros(&d, &[n]).unwrap_err();
    assert!(matches!(e, Error::TooLarge { op: "full", .. }), "{e}");
    assert!(e
        .to_string()
        .contains("more than this adapter allows in one buffer"));
    let big = Tensor::zeros(&d, &[n / 2 + 1, 2]);
    assert!(big.is_err());
}

// Bad indices are found on the device; a private device keeps the report from reaching
// other tests that share the process-wide one.
#[test]
fn out_of_range_indices_are_reported_at_read_back() {
    let d = Device::new().unwrap();
    let x = Tensor::from_slice(&d, &[1.0, 2.0, 3.0], &[3]).unwrap();
    let idx = Tensor::from_slice_u32(&d, &[0, 7, 1], &[3]).unwrap();
    let y = x.index_select(0, &idx).unwrap();
    let e = y.to_vec().unwrap_err();
    assert_eq!(
        e.to_string(),
        "gather: index 7 is out of range for an axis of size 3"
    );
    // The report is cleared and the device keeps working.
    let ok = x
        .index_select(0, &Tensor::from_slice_u32(&d, &[2, 0], &[2]).unwrap())
        .unwrap();
    assert_eq!(ok.to_vec().unwrap(), [3.0, 1.0]);
    let logits = Tensor::zeros(&d, &[2, 4]).unwrap();
    let t = Tensor::from_slice_u32(&d, &[1, 4], &[2]).unwrap();
    let e = logits.cross_entropy(&t, 0.0).unwrap().to_vec().unwrap_err();
    assert!(
        matches!(
            e,
            Error::Index {
                op: "cross_entropy",
                index: 4,
                size: 4
            }
        ),
        "{e}"
    );
    assert!(x.sum_all().unwrap().item().is_ok());
}
