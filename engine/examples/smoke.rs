use engine::{Device, Tensor};
fn main() -> engine::Result<()> {
    let dev = Device::new()?;
    println!("{}", dev.info());
    let a = Tensor::from_slice(&dev, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3])?;
    println!("add {:?}", a.add(&a)?.to_vec()?);
    println!("gelu {:?}", a.gelu()?.to_vec()?);
    println!("mm {:?}", a.matmul(&a.t()?)?.to_vec()?);
    println!("softmax {:?}", a.softmax()?.to_vec()?);
    println!("sum0 {:?}", a.sum(0, false)?.to_vec()?);
    println!("argsort {:?}", a.neg()?.argsort(false)?.to_vec_u32()?);
    Ok(())
}
