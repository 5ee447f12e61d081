//! Ask the cocoon network one question from Rust, streaming the answer.
//!
//! `cargo run -p cocoon-client --example light_client -- \
//!     /ip4/127.0.0.1/udp/PORT/quic-v1/p2p/PEER "What is the capital of France?"`
//! (a bootstrap address as `cocoon node` prints it). Accepts development evidence, as
//! workers without a TEE present it: drop `insecure_dev` for production.

use cocoon_client::{
    ChatMessage, ClientTrust, Event, InferRequest, JobInput, LightClient, Sampling,
};
use futures::StreamExt;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(bootstrap), Some(question)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: light_client BOOTSTRAP_MULTIADDR QUESTION");
    };
    let client = LightClient::builder()
        .bootstrap(bootstrap.parse()?)
        .trust(ClientTrust {
            insecure_dev: true,
            ..Default::default()
        })
        .build()
        .await?;
    let request = InferRequest {
        model: "smollm2-135m-instruct-q4_1".into(),
        input: JobInput::Chat(vec![ChatMessage {
            role: "user".into(),
            content: question,
        }]),
        sampling: Sampling {
            max_tokens: 64,
            ..Default::default()
        },
    };
    let mut answer = Box::pin(client.infer(request));
    while let Some(event) = answer.next().await {
        match event? {
            Event::Text(text) => print!("{text}"),
            Event::Done(o) => println!("\n[{} paid {} nanoTON]", o.worker_peer, o.paid_nanoton),
            // Events a later version adds.
            _ => {}
        }
    }
    client.shutdown().await;
    Ok(())
}
