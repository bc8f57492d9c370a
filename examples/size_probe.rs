fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = async_nats::connect("127.0.0.1:4222").await.unwrap();
        let t = tracehop::nats::TracedClient::new(
            c.clone(),
            tracehop::Telemetry::builder("x").build().unwrap(),
        );
        let f1 = c.publish("a", bytes::Bytes::new());
        println!("raw publish {}", std::mem::size_of_val(&f1));
        let h = async_nats::HeaderMap::new();
        let f2 = c.publish_with_headers("a", h, bytes::Bytes::new());
        println!("raw publish_with_headers {}", std::mem::size_of_val(&f2));
        let f3 = t.publish("a", bytes::Bytes::new());
        println!("traced publish {}", std::mem::size_of_val(&f3));
    });
}
