//! The real kinds: images through the Bedrock stand-in (its quotas, its content filter) and Wi-Fi QR
//! codes.

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::SqsBatchResponse;
use jobpipe_core::clock::ManualClock;
use jobpipe_core::job::Payload;
use jobpipe_testkit::{BedrockServer, TestStack};
use queue_processor::{Processor, RecordOutcome};
use serde_json::json;

use crate::helpers::{Harness, harness};

async fn image_harness(overrides: &[(&str, &str)]) -> (Harness, BedrockServer) {
    let bedrock = BedrockServer::start().await;
    let stack = TestStack::new().await.with_bedrock_endpoint(&bedrock.url);
    let clock = ManualClock::starting_now();
    let processor = Processor::new(&stack.config_with(overrides), &stack.clients, Arc::new(clock.clone()));
    (Harness { stack, clock, processor: Arc::new(processor) }, bedrock)
}

impl Harness {
    /// One delivery from the image queue, settled as the event source mapping would.
    async fn deliver_image(&self) -> RecordOutcome {
        let records = self.stack.receive_image_batch(1).await;
        assert_eq!(records.len(), 1, "expected one image message");
        let outcome = self.processor.process_record(&records[0], None).await;
        if outcome.acknowledges() {
            self.stack.settle_on(&self.stack.image_queue_url, &records, &SqsBatchResponse::default()).await;
        }
        outcome
    }

    async fn object(&self, key: &str) -> (Vec<u8>, aws_sdk_s3::operation::get_object::GetObjectOutput) {
        let out = self.stack.clients.s3.get_object().bucket(&self.stack.bucket).key(key).send().await.unwrap();
        let (body, out) = (
            out.body,
            aws_sdk_s3::operation::get_object::GetObjectOutput::builder()
                .set_content_type(out.content_type)
                .set_metadata(out.metadata)
                .set_content_length(out.content_length)
                .build(),
        );
        (body.collect().await.unwrap().into_bytes().to_vec(), out)
    }
}

#[tokio::test]
async fn an_image_job_stores_the_generated_png_with_its_metadata() {
    let (h, bedrock) = image_harness(&[]).await;
    let job = h
        .submit_via(
            &h.processor.dispatcher,
            "image",
            json!({"prompt": "a lighthouse at dusk", "width": 640, "height": 384, "seed": 7}),
        )
        .await;
    assert_eq!(h.main_queue_depth().await, 0, "image jobs travel on their own queue");

    let outcome = h.deliver_image().await;
    let RecordOutcome::Completed(done) = outcome else { panic!("{outcome:?}") };
    let Some(Payload::Inline(result)) = done.result else { panic!("{:?}", done.result) };
    let key = format!("results/{}/image.png", job.job_id);
    assert_eq!(result["key"], key.as_str());
    assert_eq!(
        (result["width"].as_u64(), result["height"].as_u64(), result["seed"].as_u64()),
        (Some(640), Some(384), Some(7))
    );

    let (bytes, object) = h.object(&key).await;
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(jobpipe_core::kinds::raster::png_dimensions(&bytes), Ok((640, 384)));
    assert_eq!(object.content_type(), Some("image/png"));
    assert_eq!(object.content_length(), Some(bytes.len() as i64));
    assert_eq!(result["bytes"].as_u64(), Some(bytes.len() as u64));
    let metadata = object.metadata().unwrap();
    assert_eq!(metadata.get("job-id").map(String::as_str), Some(job.job_id.as_str()));
    assert_eq!(metadata.get("owner").map(String::as_str), Some("alice"));
    assert_eq!(metadata.get("model").map(String::as_str), Some("amazon.nova-canvas-v1:0"));
    assert_eq!(metadata.get("seed").map(String::as_str), Some("7"));
    assert_eq!(bedrock.stand_in.invocations.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// A throttled image waits out the quota window (a minute and up to half a minute of jitter) as a new,
/// delayed message, and spends no attempt: throttled more often than `MAX_ATTEMPTS` (or the queue's
/// `maxReceiveCount`) allows, it still completes, on its first counted attempt. (It was retried after
/// 1-16 s and each throttle counted, so a burst over the per-minute quota failed jobs in about 30 s.)
#[tokio::test]
async fn throttling_waits_out_the_quota_window_without_spending_attempts() {
    let (h, bedrock) = image_harness(&[]).await;
    bedrock.stand_in.set_faults(1, Duration::ZERO).await;
    let job =
        h.submit_via(&h.processor.dispatcher, "image", json!({"prompt": "a fox", "width": 320, "height": 320})).await;
    let outcome = h.deliver_image().await;
    let RecordOutcome::Requeued { delay } = outcome else { panic!("{outcome:?}") };
    assert!((Duration::from_secs(60)..=Duration::from_secs(90)).contains(&delay), "{delay:?}");
    let throttled = h.job(&job.job_id).await;
    assert_eq!((throttled.attempts, throttled.last_error.unwrap().code.as_str()), (0, "model_throttled"));
    // The new message waits out the window; the old one is gone.
    assert!(h.stack.receive_image_batch(1).await.is_empty(), "nothing to receive before the window ends");
    assert_eq!(h.stack.queue_depth(&h.stack.image_queue_url).await, 1);

    // With a zero window, a job throttled more often than it has attempts still completes.
    let (h, bedrock) = image_harness(&[("THROTTLE_WINDOW_SECONDS", "0"), ("MAX_ATTEMPTS", "2")]).await;
    bedrock.stand_in.set_faults(4, Duration::ZERO).await;
    let job =
        h.submit_via(&h.processor.dispatcher, "image", json!({"prompt": "a fox", "width": 320, "height": 320})).await;
    for _ in 0..4 {
        let outcome = h.deliver_image().await;
        assert!(matches!(outcome, RecordOutcome::Requeued { .. }), "{outcome:?}");
    }
    let outcome = h.deliver_image().await;
    assert!(matches!(outcome, RecordOutcome::Completed(_)), "{outcome:?}");
    assert_eq!(h.job(&job.job_id).await.attempts, 1);
}

#[tokio::test]
async fn a_prompt_the_content_filter_blocks_fails_for_good_with_words_a_person_can_act_on() {
    let (h, bedrock) = image_harness(&[]).await;
    let job = h
        .submit_via(
            &h.processor.dispatcher,
            "image",
            json!({"prompt": "something [blocked]", "width": 320, "height": 320}),
        )
        .await;
    let outcome = h.deliver_image().await;
    assert!(matches!(outcome, RecordOutcome::Failed(_)), "{outcome:?}");
    let error = h.job(&job.job_id).await.error.unwrap();
    assert_eq!(error.code, "prompt_blocked");
    assert!(
        error.message.contains("content filters") && error.message.contains("Change the prompt"),
        "{}",
        error.message
    );
    assert_eq!(bedrock.stand_in.invocations.load(std::sync::atomic::Ordering::SeqCst), 1, "not retried");
}

#[tokio::test]
async fn a_wifi_qr_job_stores_a_code_that_decodes_to_the_network() {
    let h = harness().await;
    h.submit_via(
        &h.processor.dispatcher,
        "wifi-qr",
        json!({"ssid": "Lab;Net", "password": "p@ss:w0rd,\\x", "hidden": true}),
    )
    .await;
    let outcome = h.deliver_one().await;
    let RecordOutcome::Completed(done) = outcome else { panic!("{outcome:?}") };
    let Some(Payload::Inline(result)) = done.result else { panic!() };
    assert!(result.get("password").is_none(), "the password is not repeated in the result");
    let (bytes, object) = h.object(result["key"].as_str().unwrap()).await;
    assert_eq!(object.content_type(), Some("image/png"));
    let decoder = png::Decoder::new(std::io::Cursor::new(&bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut pixels).unwrap();
    let (w, hgt) = (info.width as usize, info.height as usize);
    let mut image = rqrr::PreparedImage::prepare_from_greyscale(w, hgt, |x, y| pixels[y * w + x]);
    let grids = image.detect_grids();
    assert_eq!(grids[0].decode().unwrap().1, r"WIFI:T:WPA;S:Lab\;Net;P:p@ss\:w0rd\,\\x;H:true;;");
}
