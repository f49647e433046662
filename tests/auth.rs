//! Authentication and authorization through the HTTP API: a matrix of tokens × routes × models,
//! the edge authorizer through `cargo lambda`'s invoke API, and a log capture proving tokens and
//! payloads never reach the logs.

use base64::Engine;
use lmaas_tests::{client, fixture, stack};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::{call, put_owned_version};

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn claims(overrides: Value) -> Value {
    let mut claims = json!({
        "sub": "alice", "tenant": "acme", "scope": "infer models:read",
        "iss": "lmaas-dev", "aud": "lmaas", "exp": now() + 600, "nbf": now() - 10,
    });
    for (k, v) in overrides.as_object().unwrap() {
        claims[k] = v.clone();
    }
    claims
}

fn b64(value: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

/// Models for the matrix: all copies of `mlp`, with different owners and ACLs.
async fn seed_models() {
    static SEEDED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    SEEDED
        .get_or_init(|| async {
            let mlp = std::fs::read(lmaas_tests::root().join(".lmaas/samples/mlp/model.onnx")).unwrap();
            let file: &[(&str, &[u8], Option<&str>)] = &[("model.onnx", &mlp, None)];
            put_owned_version("acme-private", 1, "ready", file, Some("acme"), json!({})).await;
            put_owned_version("public-model", 1, "ready", file, Some("other"), json!({"invoke": ["*"]})).await;
            put_owned_version("shared-read", 1, "ready", file, Some("other"), json!({"read": ["tenant:acme"]})).await;
        })
        .await;
}

/// (what, (method, path), Authorization header, expected status)
type Case<'a> = (&'a str, (Method, String), Option<String>, u16);

#[tokio::test]
async fn the_auth_matrix_holds_for_every_token_route_and_model() {
    seed_models().await;
    let s = stack();
    let admin = s.admin_token().to_string();
    let acme = s.create_key("acme", "alice", "infer,models:read", None);
    let acme_read_only = s.create_key("acme", "reader", "models:read", None);
    let acme_infer_only = s.create_key("acme", "runner", "infer", None);
    let globex = s.create_key("globex", "bob", "infer,models:read", None);
    let revoked = s.create_key("acme", "mallory", "infer,models:read", None);
    s.revoke_key(&revoked);
    let expired = s.create_key("acme", "old", "infer,models:read", Some("1s"));
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;

    let rs256 = s.jwt("rsa", Some("dev-rsa"), &claims(json!({})));
    let es256 = s.jwt("ec", Some("dev-ec"), &claims(json!({})));
    let jwt_read_only = s.jwt("rsa", Some("dev-rsa"), &claims(json!({"scope": "models:read"})));
    let jwt_expired = s.jwt("rsa", Some("dev-rsa"), &claims(json!({"exp": now() - 3600})));
    let jwt_not_yet = s.jwt("rsa", Some("dev-rsa"), &claims(json!({"nbf": now() + 3600})));
    let jwt_wrong_iss = s.jwt("rsa", Some("dev-rsa"), &claims(json!({"iss": "someone-else"})));
    let jwt_wrong_aud = s.jwt("rsa", Some("dev-rsa"), &claims(json!({"aud": "another-api"})));
    let jwt_unknown_kid = s.jwt("rsa", Some("rotated-away"), &claims(json!({})));
    let jwt_no_kid = s.jwt("rsa", None, &claims(json!({})));
    let alg_none =
        format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&claims(json!({"scope": "admin"}))));
    let hs256_with_public_key = {
        // The classic confusion attack: HMAC "signed" with the server's public RSA key.
        use jsonwebtoken::{EncodingKey, Header};
        let jwks: Value = serde_json::from_str(&s.env["LMAAS_JWKS"]).unwrap();
        let mut header = Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some("dev-rsa".into());
        jsonwebtoken::encode(
            &header,
            &claims(json!({})),
            &EncodingKey::from_secret(jwks.to_string().as_bytes()).unwrap(),
        )
        .unwrap()
    };
    let tampered = {
        let parts: Vec<&str> = rs256.split('.').collect();
        format!("{}.{}.{}", parts[0], b64(&claims(json!({"scope": "admin", "tenant": "globex"}))), parts[2])
    };

    let infer = |model: &str| (Method::POST, format!("/v2/models/{model}/infer"));
    let metadata = |model: &str| (Method::GET, format!("/v2/models/{model}"));
    let ready = |model: &str| (Method::GET, format!("/v2/models/{model}/ready"));
    let open = |path: &str| (Method::GET, path.to_string());

    let bearer = |t: &str| Some(format!("Bearer {t}"));
    let cases: Vec<Case> = vec![
        ("no header, infer", infer("acme-private"), None, 401),
        ("no header, metadata", metadata("acme-private"), None, 401),
        ("no header, ready", ready("acme-private"), None, 401),
        ("wrong scheme", infer("acme-private"), Some(format!("Basic {acme}")), 401),
        ("empty bearer", infer("acme-private"), Some("Bearer ".into()), 401),
        ("malformed token", infer("acme-private"), bearer("not.a.jwt"), 401),
        ("unknown API key", infer("acme-private"), bearer(&format!("lmk_{}", "0".repeat(64))), 401),
        ("alg none", infer("acme-private"), bearer(&alg_none), 401),
        ("HS256 signed with the RSA public key", infer("acme-private"), bearer(&hs256_with_public_key), 401),
        ("expired JWT", infer("acme-private"), bearer(&jwt_expired), 401),
        ("JWT not yet valid", infer("acme-private"), bearer(&jwt_not_yet), 401),
        ("wrong issuer", infer("acme-private"), bearer(&jwt_wrong_iss), 401),
        ("wrong audience", infer("acme-private"), bearer(&jwt_wrong_aud), 401),
        ("unknown kid", infer("acme-private"), bearer(&jwt_unknown_kid), 401),
        ("no kid with several keys", infer("acme-private"), bearer(&jwt_no_kid), 401),
        ("tampered payload", infer("acme-private"), bearer(&tampered), 401),
        ("revoked key", infer("acme-private"), bearer(&revoked), 401),
        ("expired key", infer("acme-private"), bearer(&expired), 401),
        ("RS256 JWT, own tenant", infer("acme-private"), bearer(&rs256), 200),
        ("ES256 JWT, own tenant", infer("acme-private"), bearer(&es256), 200),
        ("JWT without the infer scope", infer("acme-private"), bearer(&jwt_read_only), 403),
        ("JWT reads metadata", metadata("acme-private"), bearer(&jwt_read_only), 200),
        ("key without the infer scope", infer("acme-private"), bearer(&acme_read_only), 403),
        ("key without models:read, metadata", metadata("acme-private"), bearer(&acme_infer_only), 403),
        ("key without models:read, ready", ready("acme-private"), bearer(&acme_infer_only), 403),
        ("key, own tenant, infer", infer("acme-private"), bearer(&acme), 200),
        ("key, own tenant, metadata", metadata("acme-private"), bearer(&acme), 200),
        ("key, own tenant, ready", ready("acme-private"), bearer(&acme), 200),
        ("another tenant's private model, infer", infer("acme-private"), bearer(&globex), 404),
        ("another tenant's private model, metadata", metadata("acme-private"), bearer(&globex), 404),
        ("another tenant's private model, ready", ready("acme-private"), bearer(&globex), 404),
        ("public model, other tenant", infer("public-model"), bearer(&globex), 200),
        ("public model, via JWT", infer("public-model"), bearer(&rs256), 200),
        ("read grant to tenant, metadata", metadata("shared-read"), bearer(&acme), 200),
        ("read grant to tenant, infer", infer("shared-read"), bearer(&acme), 403),
        ("read grant to another tenant", metadata("shared-read"), bearer(&globex), 404),
        ("no owner and no ACL: deny by default", infer("mlp"), bearer(&acme), 404),
        ("admin, any tenant", infer("acme-private"), bearer(&admin), 200),
        ("admin, unowned model", infer("mlp"), bearer(&admin), 200),
        ("health live is open", open("/v2/health/live"), None, 200),
        ("health ready is open", open("/v2/health/ready"), None, 200),
        ("server metadata is open", open("/v2"), None, 200),
        ("unknown model, valid key", infer("no-such-model"), bearer(&acme), 404),
    ];
    assert!(cases.len() >= 40);
    let request = fixture("mlp")["request"].clone();
    let mut failures = Vec::new();
    for (what, (method, path), authorization, expected) in &cases {
        let mut builder = client().request(method.clone(), format!("{}{path}", s.url));
        if let Some(value) = authorization {
            builder = builder.header("authorization", value);
        }
        if *method == Method::POST {
            builder = builder.json(&request);
        }
        let response = builder.send().await.unwrap();
        let status = response.status().as_u16();
        let challenge = response.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_string());
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status != *expected {
            failures.push(format!("{what}: expected {expected}, got {status} {body}"));
        }
        if status == 401 && challenge.as_deref() != Some("Bearer") {
            failures.push(format!("{what}: 401 without 'WWW-Authenticate: Bearer'"));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));

    // A private model and a missing one are indistinguishable to an outsider.
    let (_, private) = call(Method::POST, "/v2/models/acme-private/infer", Some(&globex), Some(&request)).await;
    let (_, missing) = call(Method::POST, "/v2/models/acme-privatx/infer", Some(&globex), Some(&request)).await;
    assert_eq!(
        private["error"].as_str().unwrap().replace("acme-private", "X"),
        missing["error"].as_str().unwrap().replace("acme-privatx", "X")
    );
}

/// Invokes the authorizer through cargo lambda's Lambda invoke API, as `cargo lambda invoke` does.
async fn authorize(token: &str, method: &str, path: &str) -> Value {
    let s = stack();
    let event = std::fs::read_to_string(lmaas_tests::root().join("samples/events/authorizer.json")).unwrap();
    let mut event: Value = serde_json::from_str(&event).unwrap();
    event["identitySource"] = json!([format!("Bearer {token}")]);
    event["headers"]["authorization"] = json!(format!("Bearer {token}"));
    event["rawPath"] = json!(path);
    event["requestContext"]["http"]["method"] = json!(method);
    let response = client()
        .post(format!("{}/2015-03-31/functions/authorizer/invocations", s.url))
        .json(&event)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

#[tokio::test]
async fn the_edge_authorizer_decides_like_the_functions() {
    let s = stack();
    let key = s.create_key("acme", "alice", "infer", None);
    let allowed = authorize(&key, "POST", "/v2/models/mlp/infer").await;
    assert_eq!(allowed["isAuthorized"], true, "{allowed}");
    assert_eq!(allowed["context"]["tenant"], "acme");
    assert_eq!(allowed["context"]["scopes"], "infer");
    let wrong_scope = authorize(&key, "GET", "/v2/models/mlp").await;
    assert_eq!(wrong_scope["isAuthorized"], false);
    s.revoke_key(&key);
    let other = s.create_key("acme", "eve", "infer", None);
    s.revoke_key(&other);
    assert_eq!(authorize(&other, "POST", "/v2/models/mlp/infer").await["isAuthorized"], false);
    assert_eq!(authorize("garbage", "POST", "/v2/models/mlp/infer").await["isAuthorized"], false);
}

#[tokio::test]
async fn keys_are_listed_without_their_secret_and_revocation_is_shown() {
    let s = stack();
    let key = s.create_key("initech", "peter", "jobs:read", Some("90d"));
    assert!(key.starts_with("lmk_") && key.len() == 68, "{key}");
    s.revoke_key(&key);
    let listing = s.cli(&["keys", "ls"]);
    assert!(!listing.contains(&key[4..]), "the key itself is never shown");
    let row = listing.lines().find(|l| l.contains("peter")).expect("the key is listed");
    assert!(row.contains("initech") && row.contains("jobs:read") && row.ends_with("revoked"), "{row}");
}

#[tokio::test]
async fn tokens_and_payloads_never_reach_the_logs() {
    let s = stack();
    let key = s.create_key("dev", "logger", "infer,models:read", None);
    let marker = "payload-marker-7f3a9c";
    let mut request = fixture("dtypes")["request"].clone();
    for input in request["inputs"].as_array_mut().unwrap() {
        if input["name"] == "x_string" {
            input["data"] = json!([marker, marker, marker]);
        }
    }
    let (status, _) = call(Method::POST, "/v2/models/dtypes/infer", Some(s.admin_token()), Some(&request)).await;
    assert_eq!(status, StatusCode::OK);
    // Failing requests are logged with their reason; the reason must not carry the secrets either.
    call(Method::POST, "/v2/models/dtypes/infer", Some(&key), Some(&request)).await;
    let bad_key = format!("lmk_{}", "f".repeat(64));
    call(Method::POST, "/v2/models/mlp/infer", Some(&bad_key), Some(&request)).await;
    let out_of_range = json!({"inputs": [{"name": "x_int8", "datatype": "INT8", "shape": [1], "data": [987654]}]});
    call(Method::POST, "/v2/models/dtypes/infer", Some(s.admin_token()), Some(&out_of_range)).await;
    let mut bad_token_id = fixture("minilm_batch1")["request"].clone();
    bad_token_id["inputs"][0]["data"][1] = json!(876543);
    let (status, body) =
        call(Method::POST, "/v2/models/minilm/infer", Some(s.admin_token()), Some(&bad_token_id)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let log = std::fs::read_to_string(s.state.join("watch.log")).unwrap();
    assert!(log.contains("request rejected"), "the failures were logged");
    for secret in [s.admin_token(), &key, &bad_key, marker, "987654", "876543"] {
        assert!(!log.contains(secret), "the log contains {secret}");
    }
}
