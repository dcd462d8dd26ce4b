//! The Bedrock runtime stand-in of the local stack, served on a port of its own for tests.

/// The Bedrock runtime stand-in on a free port, for as long as the returned value lives.
pub struct BedrockServer {
    pub url: String,
    pub stand_in: std::sync::Arc<jobpipe_emulator::bedrock::BedrockStandIn>,
    task: tokio::task::JoinHandle<()>,
}

impl BedrockServer {
    pub async fn start() -> BedrockServer {
        let stand_in = std::sync::Arc::new(jobpipe_emulator::bedrock::BedrockStandIn::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding the Bedrock stand-in");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = stand_in.router();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        BedrockServer { url, stand_in, task }
    }
}

impl Drop for BedrockServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
