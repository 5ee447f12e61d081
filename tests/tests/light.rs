//! The embeddable light client (`cocoon_client::LightClient`) against real worker processes: the
//! stream carries the answer and ends with the outcome; the job was attested, encrypted and
//! paid like one from `cocoon infer`.

use cocoon_client::infer::InferRequest;
use cocoon_client::light::{Event, LightClient, LightError};
use cocoon_client::trust::ClientTrust;
use cocoon_p2p::job::{JobInput, Sampling};
use cocoon_tests::LoopbackNet;
use futures::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_light_client_streams_a_paid_answer() {
    let net = tokio::task::spawn_blocking(|| LoopbackNet::start("light", &[vec![]]))
        .await
        .unwrap()
        .expect("start the network");
    assert!(matches!(
        LightClient::builder().build().await,
        Err(LightError::NoWayIn)
    ));
    let client = LightClient::builder()
        .bootstrap(net.bootstrap_addr().parse().unwrap())
        .data_dir(net.dir.path().join("light"))
        .trust(ClientTrust {
            insecure_dev: true,
            ..Default::default()
        })
        .build()
        .await
        .expect("join the network");
    let request = InferRequest {
        model: "smollm2-135m-instruct-q4_1".into(),
        input: JobInput::Prompt("The capital of France is".into()),
        sampling: Sampling {
            max_tokens: 8,
            ..Default::default()
        },
    };
    let mut stream = Box::pin(client.infer(request.clone()));
    let (mut text, mut outcome) = (String::new(), None);
    while let Some(event) = stream.next().await {
        match event.expect("the job succeeds") {
            Event::Text(t) => text.push_str(&t),
            Event::Done(o) => outcome = Some(o),
            other => panic!("an event this test does not know: {other:?}"),
        }
    }
    let outcome = outcome.expect("the stream ends with the outcome");
    assert!(!text.is_empty());
    assert_eq!(outcome.text, text, "streamed text is the answer");
    assert_eq!(outcome.worker_peer, net.workers[0].peer_id);
    assert_eq!(outcome.attestation, "dev-insecure");
    assert!(outcome.paid_nanoton > 0 && outcome.channel.is_some());
    assert!(!client.adverts().is_empty());

    // Two jobs at once: each outcome lands in the reputation record (before, each job
    // copied the record and wrote it back whole, so one of the two was lost).
    let ask = |q: &str| {
        let mut r = request.clone();
        r.input = JobInput::Prompt(q.into());
        let stream = client.infer(r);
        async move {
            let mut stream = Box::pin(stream);
            let mut done = false;
            while let Some(event) = stream.next().await {
                done |= matches!(event.expect("the job succeeds"), Event::Done(_));
            }
            done
        }
    };
    let (a, b) = tokio::join!(ask("Paris is"), ask("Berlin is"));
    assert!(a && b);
    let data_dir = net.dir.path().join("light");
    client.shutdown().await;
    let reputation = cocoon_client::infer::load_reputation(&data_dir.join("reputation.json"));
    let worker: libp2p::PeerId = net.workers[0].peer_id.parse().unwrap();
    let record = reputation
        .get(&worker.to_bytes())
        .expect("the worker is known");
    assert!(record.successes > 2.5, "three jobs, {record:?}");
}
