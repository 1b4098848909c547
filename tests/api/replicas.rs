//! The service on the shared store (Redis, #21): grants recorded there before their token, a
//! Redis outage refused with 503 and shown in `/readyz`, recovery without a restart, nothing
//! acknowledged lost.

use crate::support::*;

async fn readyz(env: &Env) -> u16 {
    reqwest::get(format!("http://{}/readyz", env.app.api_addr))
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_a_grant_waits_for_redis_and_an_outage_is_refused_then_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = RedisServer::start(dir.path());
    let url = redis.url();
    let env = setup(|s| s.data.redis_url = Some(url)).await;
    assert!(env.app.redb.is_none(), "the service runs on Redis");
    let nurse = provider(&env.demo, "nurse");
    let key = nurse["private_key"].as_str().unwrap();
    let pid = patient(&env.demo, true);

    let (status, first) = post(&env.app, &signed(key, pid, &["allergies"], 1, now())).await;
    assert_eq!(status, 201, "{first}");
    let first_id: breakglass::domain::AccessId =
        first["access_id"].as_str().unwrap().parse().unwrap();
    // it is in Redis: a second store on the same server reads it
    let other = breakglass::store::RedisStore::open(&redis.url(), "breakglass:").unwrap();
    assert!(breakglass::store::Store::access(&other, &first_id)
        .unwrap()
        .is_some());
    drop(other);

    redis.kill();
    let (status, refused) = post(&env.app, &signed(key, pid, &["allergies"], 2, now())).await;
    assert_eq!(status, 503, "no token without the durable write: {refused}");
    eventually("readyz says the store is down", SECS, async || {
        (readyz(&env).await == 503).then_some(())
    })
    .await;

    redis.restart();
    // the same request (its nonce was given back: nothing was recorded) is granted once Redis is back
    let again = eventually("granted again", SECS, async || {
        let (status, g) = post(&env.app, &signed(key, pid, &["allergies"], 2, now())).await;
        (status == 201).then_some(g)
    })
    .await;
    assert_ne!(again["access_id"], first["access_id"]);
    eventually("ready again", SECS, async || {
        (readyz(&env).await == 200).then_some(())
    })
    .await;
    // the grant acknowledged before the outage is still there, with its chain record
    assert!(env.app.store.access(&first_id).unwrap().is_some());
    assert!(env
        .app
        .store
        .submission(&format!("record:{first_id}"))
        .unwrap()
        .is_some());
}
