use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};

#[test]
fn q4_1_matches_dequantized() {
    let dev = Device::Cpu;
    for (m, k, n) in [(1usize, 576usize, 1536usize), (37, 576, 576), (1, 1536, 576)] {
        let w = (Tensor::randn(0f32, 0.05, (n, k), &dev).unwrap()).contiguous().unwrap();
        let mut x = Tensor::randn(0f32, 1.0, (1, m, k), &dev).unwrap();
        // an outlier dim
        let mut v = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for r in 0..m { v[r * k + 7] = 300.0; }
        x = Tensor::from_vec(v, (1, m, k), &dev).unwrap();
        for dt in [GgmlDType::Q4_1, GgmlDType::Q8_0, GgmlDType::Q4_0, GgmlDType::Q4K] {
            let q = QTensor::quantize(&w, dt).unwrap();
            let deq = q.dequantize(&dev).unwrap();
            let reference = x.broadcast_matmul(&deq.t().unwrap()).unwrap();
            let mm = QMatMul::from_qtensor(q).unwrap();
            let got = mm.forward(&x).unwrap();
            let diff = (got - &reference).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            let scale = reference.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            println!("{dt:?} m={m} k={k} n={n}: max diff {diff} (scale {scale})");
        }
    }
}
