//! The reviewers' pages (server-rendered, `templates/review/`, with `/static/review.js` for
//! the signatures) and the review API:
//!
//! - `GET /review` the queue, `GET /review/accesses/{id}` an access and its verdict form,
//!   `POST /review/accesses/{id}/verdict`; `GET /review/sign-in`, `POST /review/challenge`,
//!   `POST /review/sign-in` (JSON), `POST /review/sign-out`;
//! - `GET /v1/reviews` (the queue as JSON, filters and a cursor), `GET /v1/reviews/{id}`, and
//!   `GET /v1/audit/export?since=<seq>` (FHIR R4 AuditEvents, NDJSON), for a signed-in reviewer
//!   or an admin client (HTTP Basic), which reads and never gives a verdict.
//!
//! Every page is sent with a Content-Security-Policy that allows only this origin's script and
//! style, and `no-store`; every form carries the session's CSRF token, and is read (as it
//! arrives, within its bound) only once the session is checked.
//!
//! It must not: do work beyond calling into `review` and the store.

use actix_web::cookie::{Cookie, SameSite};
use actix_web::{web, HttpRequest, HttpResponse};
use minijinja::{context, Environment, Value as V};
use serde::Deserialize;
use serde_json::json;

use super::admin::Admin;
use super::problem::problem;
use crate::clock::now_secs;
use crate::domain::{AccessId, DataType, Role, VerdictKind};
use crate::refusal::Refusal;
use crate::review::listing::{Filter, Page};
use crate::review::verdict::Given;
use crate::review::views::Viewer;
use crate::review::{csrf_matches, Review, Session};

const SESSION_COOKIE: &str = "bg_session";
const CHALLENGE_COOKIE: &str = "bg_challenge";
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
pub const REVIEW_JS: &str = include_str!("../../static/review.js");
pub const REVIEW_CSS: &str = include_str!("../../static/review.css");

pub struct Pages {
    env: Environment<'static>,
}

impl Pages {
    pub fn new() -> Result<Pages, minijinja::Error> {
        let mut env = Environment::new();
        macro_rules! add {
            ($($name:literal),+) => {
                $( env.add_template($name, include_str!(concat!("../../templates/", $name)))?; )+
            };
        }
        add!(
            "review/layout.html",
            "review/sign_in.html",
            "review/queue.html",
            "review/access.html",
            "review/problem.html"
        );
        env.add_filter("time", |secs: u64| -> String {
            jiff::Timestamp::from_second(secs as i64)
                .map(|t| t.strftime("%Y-%m-%d %H:%M UTC").to_string())
                .unwrap_or_default()
        });
        env.add_filter("age", |secs: u64| -> String {
            match secs {
                s if s < 60 => format!("{s} s"),
                s if s < 3600 => format!("{} min", s / 60),
                s if s < 86_400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
                s => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
            }
        });
        Ok(Pages { env })
    }

    fn render(&self, name: &str, ctx: minijinja::Value) -> HttpResponse {
        self.render_status(200, name, ctx)
    }

    fn render_status(&self, status: u16, name: &str, ctx: minijinja::Value) -> HttpResponse {
        match self.env.get_template(name).and_then(|t| t.render(ctx)) {
            Ok(html) => page(status)
                .content_type("text/html; charset=utf-8")
                .body(html),
            Err(e) => {
                tracing::error!(error = %e, template = name, "a review page could not be rendered");
                page(500)
                    .content_type("text/plain")
                    .body("the page could not be rendered")
            }
        }
    }

    /// A refusal as a page, with a way back.
    fn problem(&self, r: &Refusal, session: Option<&Session>, back: &str) -> HttpResponse {
        let (back, back_label) = if r.status == 401 {
            ("/review/sign-in", "Sign in")
        } else {
            (back, "Back")
        };
        self.render_status(
            r.status,
            "review/problem.html",
            context! { title => r.title, detail => r.detail.clone(), code => r.code, back, back_label,
                       reviewer => session.map(|s| s.reviewer.to_string()), csrf => session.map(|s| s.csrf.clone()) },
        )
    }
}

fn page(status: u16) -> actix_web::HttpResponseBuilder {
    let mut b = HttpResponse::build(
        actix_web::http::StatusCode::from_u16(status)
            .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR),
    );
    b.insert_header(("content-security-policy", CSP))
        .insert_header(("cache-control", "no-store"))
        .insert_header(("x-content-type-options", "nosniff"))
        .insert_header(("referrer-policy", "no-referrer"));
    b
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/review", web::get().to(queue))
        .route("/review/challenge", web::post().to(challenge))
        .service(
            web::resource("/review/sign-in")
                .route(web::post().to(sign_in))
                .route(web::get().to(sign_in_page)),
        )
        .route("/review/sign-out", web::post().to(sign_out))
        .route("/review/accesses/{id}", web::get().to(access_page))
        .route("/review/accesses/{id}/verdict", web::post().to(verdict))
        .route("/static/review.js", web::get().to(script))
        .route("/static/review.css", web::get().to(style))
        .route("/v1/reviews", web::get().to(api_list))
        .route("/v1/reviews/{id}", web::get().to(api_detail))
        .route("/v1/audit/export", web::get().to(export));
}

async fn script() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header(("cache-control", "no-cache"))
        .insert_header(("x-content-type-options", "nosniff"))
        .body(REVIEW_JS)
}

async fn style() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header(("cache-control", "no-cache"))
        .insert_header(("x-content-type-options", "nosniff"))
        .body(REVIEW_CSS)
}

/// The request's session, if its cookie names an open one whose reviewer may still review.
async fn session(req: &HttpRequest, review: &Review) -> Result<Session, Refusal> {
    let Some(cookie) = req.cookie(SESSION_COOKIE) else {
        return Err(Refusal::new(
            401,
            "not-signed-in",
            "Not signed in",
            "sign in to review",
        ));
    };
    review.session(cookie.value()).await
}

/// The session a page is read in; without one, the way to the sign-in page.
async fn page_session(
    req: &HttpRequest,
    review: &Review,
    pages: &Pages,
) -> Result<Session, HttpResponse> {
    session(req, review).await.map_err(|r| match r.status {
        401 => redirect("/review/sign-in"),
        _ => pages.problem(&r, None, "/review"),
    })
}

fn redirect(to: &str) -> HttpResponse {
    page(303).insert_header(("location", to)).finish()
}

/// Who reads the API: a signed-in reviewer, or an admin client.
enum Reader {
    Reviewer(Session),
    /// An admin client, by its id.
    Admin(String),
}

async fn reader(req: &HttpRequest, review: &Review, admin: &Admin) -> Result<Reader, Refusal> {
    if req.headers().contains_key("authorization") {
        return match super::tokens::basic_client(req, &admin.clients) {
            Some(client) => Ok(Reader::Admin(client)),
            None => Err(Refusal::new(
                401,
                "invalid-client",
                "Invalid client",
                "the admin API takes HTTP Basic as a configured admin client",
            )),
        };
    }
    session(req, review).await.map(Reader::Reviewer)
}

fn filter_of(req: &HttpRequest) -> Result<Filter, Refusal> {
    web::Query::<Filter>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .map_err(|e| Refusal::new(400, "invalid-filter", "Invalid filter", e.to_string()))
}

fn access_id(raw: &str) -> Result<AccessId, Refusal> {
    raw.parse()
        .map_err(|e: String| Refusal::new(400, "invalid-access-id", "Invalid access id", e))
}

/// The queue's page for `filter`, read on the blocking pool: it reads every access for its
/// counts (tenths of a second for tens of thousands on Redis), which on the HTTP worker would
/// hold up the break-glass requests that worker serves.
async fn listed(review: &web::Data<Review>, filter: &Filter) -> Result<Page, Refusal> {
    let (review, filter) = (review.clone(), filter.clone());
    on_blocking_pool("the review queue", move || review.list(&filter, now_secs())).await
}

/// `read` on the blocking pool (a long read on an HTTP worker holds up the break-glass
/// requests that worker serves); `what` names it if it does not finish.
async fn on_blocking_pool<T: Send + 'static>(
    what: &'static str,
    read: impl FnOnce() -> Result<T, Refusal> + Send + 'static,
) -> Result<T, Refusal> {
    web::block(read).await.unwrap_or_else(|e| {
        tracing::error!(error = %e, what, "a read on the blocking pool did not finish");
        Err(Refusal::new(
            500,
            "internal-error",
            "Internal error",
            format!("{what} could not be read: tell the service's operators"),
        ))
    })
}

async fn queue(
    req: HttpRequest,
    review: web::Data<Review>,
    pages: web::Data<Pages>,
) -> HttpResponse {
    let s = match page_session(&req, &review, &pages).await {
        Ok(s) => s,
        Err(answer) => return answer,
    };
    let listed = match filter_of(&req) {
        Ok(f) => listed(&review, &f).await.map(|p| (f, p)),
        Err(r) => Err(r),
    };
    let (filter, listed) = match listed {
        Ok(fp) => fp,
        Err(r) => return pages.problem(&r, Some(&s), "/review"),
    };
    let next_link = listed.next_cursor.as_ref().map(|c| {
        let mut f = filter.clone();
        f.cursor = Some(c.clone());
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        if let Ok(serde_json::Value::Object(m)) = serde_json::to_value(&f) {
            for (k, v) in m {
                match v {
                    serde_json::Value::Null => {}
                    serde_json::Value::String(s) => {
                        q.append_pair(&k, &s);
                    }
                    other => {
                        q.append_pair(&k, &other.to_string());
                    }
                }
            }
        }
        format!("/review?{}", q.finish())
    });
    pages.render(
        "review/queue.html",
        context! {
            reviewer => s.reviewer.to_string(), csrf => s.csrf,
            items => V::from(minijinja::value::Serde(&listed.items)), counts => V::from(minijinja::value::Serde(&listed.counts)),
            next_cursor => listed.next_cursor, next_link,
            filter => V::from(minijinja::value::Serde(&filter)),
            roles => Role::ALL.iter().map(Role::as_str).collect::<Vec<_>>(),
            data_types => DataType::ALL.iter().map(DataType::as_str).collect::<Vec<_>>(),
            verdicts => VerdictKind::ALL.iter().map(VerdictKind::as_str).collect::<Vec<_>>(),
        },
    )
}

async fn sign_in_page(review: web::Data<Review>, pages: web::Data<Pages>) -> HttpResponse {
    pages.render(
        "review/sign_in.html",
        context! { mainnet => review.mainnet },
    )
}

async fn challenge(review: web::Data<Review>) -> HttpResponse {
    let c = match review.challenge() {
        Ok(c) => c,
        Err(r) => return problem(&r),
    };
    let cookie = Cookie::build(CHALLENGE_COOKIE, hex::encode(c.nonce))
        .path("/review")
        .http_only(true)
        .secure(review.settings.secure_cookie)
        .same_site(SameSite::Strict)
        .max_age(actix_web::cookie::time::Duration::seconds(
            review.settings.challenge_secs as i64,
        ))
        .finish();
    page(200).cookie(cookie).json(json!({
        "domain": c.domain,
        "message": c.message,
        "expires_at": c.expires_at,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    message: String,
    signature: String,
}

/// How long a signed challenge may be: a few hundred bytes.
const MAX_SIGN_IN_BYTES: usize = 16 * 1024;

async fn sign_in(
    req: HttpRequest,
    payload: web::Payload,
    review: web::Data<Review>,
) -> HttpResponse {
    // JSON only: a cross-site form cannot send it without a preflight
    if let Some(refused) = super::body::not_json(&req, "a signed challenge") {
        return problem(&refused);
    }
    // read as it arrives, within its bound and in time (a body that never comes holds nothing)
    let body = match super::body::bounded(&req, payload, MAX_SIGN_IN_BYTES).await {
        Ok(body) => body,
        Err(unread) => {
            return problem(&super::body::refusal(unread, || {
                Refusal::new(
                    413,
                    "request-too-large",
                    "Request too large",
                    format!("a signed challenge is at most {MAX_SIGN_IN_BYTES} bytes"),
                )
            }))
        }
    };
    let Ok(body) = serde_json::from_slice::<SignIn>(&body) else {
        return problem(&Refusal::new(
            400,
            "malformed-request",
            "Malformed request",
            "send {\"message\": \"0x…\", \"signature\": \"0x…\"} as JSON",
        ));
    };
    let bound = req.cookie(CHALLENGE_COOKIE);
    match review
        .sign_in(
            &body.message,
            &body.signature,
            bound.as_ref().map(|c| c.value()),
        )
        .await
    {
        Ok((token, _)) => {
            let cookie = Cookie::build(SESSION_COOKIE, token)
                .path("/")
                .http_only(true)
                .secure(review.settings.secure_cookie)
                .same_site(SameSite::Strict)
                .finish();
            let mut spent = Cookie::build(CHALLENGE_COOKIE, "").path("/review").finish();
            spent.make_removal();
            page(200)
                .cookie(cookie)
                .cookie(spent)
                .json(json!({ "redirect": "/review" }))
        }
        Err(r) => problem(&r),
    }
}

async fn sign_out(
    req: HttpRequest,
    payload: web::Payload,
    review: web::Data<Review>,
    pages: web::Data<Pages>,
) -> HttpResponse {
    // the session as it is open, whatever the chain says of its reviewer now (and while the
    // chain cannot be read): signing out always ends it
    let open = match req.cookie(SESSION_COOKIE) {
        Some(c) => review.open_session(c.value()).await,
        None => return redirect("/review/sign-in"),
    };
    let s = match open {
        Ok(s) => s,
        Err(r) if r.status == 401 => return redirect("/review/sign-in"),
        Err(r) => return pages.problem(&r, None, "/review"),
    };
    let form = match read_form(&req, payload, SIGN_OUT_FORM_BYTES).await {
        Ok(form) => form,
        Err(r) => return pages.problem(&r, Some(&s), "/review"),
    };
    if !csrf_matches(&s, form.get("csrf")) {
        return pages.problem(&csrf_refusal(), Some(&s), "/review");
    }
    if let Some(c) = req.cookie(SESSION_COOKIE) {
        if let Err(r) = review.sign_out(c.value(), &s).await {
            return pages.problem(&r, Some(&s), "/review");
        }
    }
    let mut gone = Cookie::build(SESSION_COOKIE, "").path("/").finish();
    gone.make_removal();
    let mut answer = redirect("/review/sign-in");
    let _ = answer.add_cookie(&gone);
    answer
}

/// A verdict's form: a note of 4,000 characters, each up to 4 bytes, percent-encoded.
const VERDICT_FORM_BYTES: usize = 64 * 1024;
/// A sign-out's form: its CSRF token.
const SIGN_OUT_FORM_BYTES: usize = 4 * 1024;

/// The form of a request whose session is checked (none is read before: anyone may post).
async fn read_form(
    req: &HttpRequest,
    payload: web::Payload,
    max: usize,
) -> Result<super::body::Form, Refusal> {
    use super::body::{Unread, UnreadForm};
    super::body::form(req, payload, max)
        .await
        .map_err(|unread| match unread {
            UnreadForm::Body(Unread::TooLarge) => Refusal::new(
                413,
                "form-too-large",
                "Form too large",
                format!("the form is at most {} KiB", max / 1024),
            ),
            UnreadForm::Body(Unread::TooSlow) => super::body::too_slow(),
            UnreadForm::NotAForm | UnreadForm::Body(Unread::Unreadable) => Refusal::new(
                400,
                "malformed-form",
                "Malformed form",
                "the form could not be read",
            ),
        })
}

fn csrf_refusal() -> Refusal {
    Refusal::new(
        403,
        "csrf-mismatch",
        "Form not accepted",
        "the form did not carry this session's token: reload the page and try again",
    )
}

async fn access_page(
    req: HttpRequest,
    path: web::Path<String>,
    review: web::Data<Review>,
    pages: web::Data<Pages>,
) -> HttpResponse {
    let s = match page_session(&req, &review, &pages).await {
        Ok(s) => s,
        Err(answer) => return answer,
    };
    let detail = match access_id(&path) {
        Ok(id) => review.shown(&id, Viewer::Reviewer(&s), now_secs()).await,
        Err(r) => Err(r),
    };
    match detail {
        Ok(a) => pages.render(
            "review/access.html",
            context! { a => V::from(minijinja::value::Serde(&a)), reviewer => s.reviewer.to_string(), csrf => s.csrf,
                       domain => review.domain().to_hex() },
        ),
        Err(r) => pages.problem(&r, Some(&s), "/review"),
    }
}

async fn verdict(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    review: web::Data<Review>,
    pages: web::Data<Pages>,
) -> HttpResponse {
    let back = format!("/review/accesses/{}", path.as_str());
    let s = match session(&req, &review).await {
        Ok(s) => s,
        Err(r) => return pages.problem(&r, None, &back),
    };
    let form = match read_form(&req, payload, VERDICT_FORM_BYTES).await {
        Ok(form) => form,
        Err(r) => return pages.problem(&r, Some(&s), &back),
    };
    if !csrf_matches(&s, form.get("csrf")) {
        return pages.problem(&csrf_refusal(), Some(&s), &back);
    }
    let id = match access_id(&path) {
        Ok(id) => id,
        Err(r) => return pages.problem(&r, Some(&s), "/review"),
    };
    let field = |k: &str| form.get(k).unwrap_or("");
    let given = Given {
        verdict: field("verdict"),
        note: field("note"),
        note_salt: field("note_salt"),
        revoke: field("revoke") == "yes",
        signature: field("signature"),
    };
    match review.give_verdict(&s, &id, given).await {
        Ok(_) => redirect(&back),
        Err(r) => pages.problem(&r, Some(&s), &back),
    }
}

async fn api_list(
    req: HttpRequest,
    review: web::Data<Review>,
    admin: web::Data<Admin>,
) -> HttpResponse {
    if let Err(r) = reader(&req, &review, &admin).await {
        return problem(&r);
    }
    let page = match filter_of(&req) {
        Ok(f) => listed(&review, &f).await,
        Err(r) => Err(r),
    };
    match page {
        Ok(p) => HttpResponse::Ok()
            .insert_header(("cache-control", "no-store"))
            .json(p),
        Err(r) => problem(&r),
    }
}

async fn api_detail(
    req: HttpRequest,
    path: web::Path<String>,
    review: web::Data<Review>,
    admin: web::Data<Admin>,
) -> HttpResponse {
    let reader = match reader(&req, &review, &admin).await {
        Ok(r) => r,
        Err(r) => return problem(&r),
    };
    let viewer = match &reader {
        Reader::Reviewer(s) => Viewer::Reviewer(s),
        Reader::Admin(client) => Viewer::Client(client),
    };
    let detail = match access_id(&path) {
        Ok(id) => review.shown(&id, viewer, now_secs()).await,
        Err(r) => Err(r),
    };
    match detail {
        Ok(d) => HttpResponse::Ok()
            .insert_header(("cache-control", "no-store"))
            .json(d),
        Err(r) => problem(&r),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Since {
    /// Entries after this seq (0: from the first).
    #[serde(default)]
    since: u64,
    /// The hash of entry `since` as the reader read it (`X-Audit-Last-Hash`): checked, so that
    /// a log that lost its tail and grew back past the cursor is not read on as if it had not.
    since_hash: Option<String>,
    limit: Option<usize>,
}

/// The audit log from `since` on, as FHIR R4 AuditEvents, one per line: read, checked and
/// mapped on the blocking pool (a page is 10,000 entries at most, megabytes: on the HTTP
/// worker it would hold up the break-glass requests that worker serves).
async fn export(
    req: HttpRequest,
    review: web::Data<Review>,
    admin: web::Data<Admin>,
) -> HttpResponse {
    if let Err(r) = reader(&req, &review, &admin).await {
        return problem(&r);
    }
    let Ok(q) = web::Query::<Since>::from_query(req.query_string()) else {
        return problem(&Refusal::new(
            400,
            "invalid-query",
            "Invalid query",
            "since is an audit entry's seq (a whole number); limit at most 10000",
        ));
    };
    let q = q.into_inner();
    let page = on_blocking_pool("the audit log's page", move || exported(&review, &q)).await;
    let (body, last_seq, last_hash) = match page {
        Ok(page) => page,
        Err(r) => return problem(&r),
    };
    let mut answer = HttpResponse::Ok();
    answer
        .content_type("application/fhir+ndjson")
        .insert_header(("cache-control", "no-store"))
        .insert_header(("x-audit-last-seq", last_seq.to_string()));
    // the hash of that entry, for the next export's `since_hash`
    if let Some(hash) = last_hash {
        answer.insert_header(("x-audit-last-hash", hash));
    }
    answer.body(body)
}

/// The export's page for `q`: its NDJSON, the last entry's seq and hash (the cursor's when the
/// page is empty); or why not.
fn exported(review: &Review, q: &Since) -> Result<(String, u64, Option<String>), Refusal> {
    let limit = q.limit.unwrap_or(10_000).clamp(1, 10_000);
    let hash_ok = |h: &String| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit());
    let (Some(from), true) = (
        q.since.checked_add(1),
        q.since_hash.as_ref().is_none_or(hash_ok),
    ) else {
        return Err(Refusal::new(
            400,
            "invalid-query",
            "Invalid query",
            "since is an audit entry's seq (a whole number), since_hash its hash (64 hex digits); limit at most 10000",
        ));
    };
    let unreadable = |what: String| {
        tracing::error!(%what, "audit export: the log cannot be exported past it");
        Refusal::new(
            500,
            "audit-entry-unreadable",
            "Audit entry unreadable",
            format!("{what}; run `breakglass audit verify`"),
        )
    };
    let store = &review.state.store;
    // (and the cursor's entry: the page's first entry must link to it, and the reader may name
    // it by its hash)
    let named = q.since_hash.as_ref().filter(|_| q.since > 0);
    let read = store.audit_head().and_then(|head| {
        let at = match q.since {
            0 => Vec::new(),
            since => store.audit_entries(since, 1)?,
        };
        Ok((head, at, store.audit_entries(from, limit)?))
    });
    let (head, at, entries) = match read {
        Ok(read) => read,
        Err(crate::store::StoreError::Corrupt(key, _)) => {
            return Err(unreadable(format!("the log's row {key} could not be read")))
        }
        Err(e) => {
            tracing::error!(error = %e, "audit export: store unavailable");
            return Err(Refusal::new(
                503,
                "store-unavailable",
                "Store unavailable",
                "the audit log cannot be read right now; try again",
            ));
        }
    };
    let head_hash = head.as_ref().map(|h| hex::encode(h.hash));
    let head = head.map_or(0, |h| h.seq);
    if q.since > head {
        // a cursor past the log's end: the store was restored from an older copy, or lost its
        // tail (a failover); entries numbered from here on would be missed, not repeated
        return Err(Refusal::new(
            409,
            "cursor-past-head",
            "Cursor past the log's end",
            format!("the audit log ends at entry {head}, before {}: the store lost entries the cursor read (a restore, a failover); export from {head} and compare", q.since),
        ));
    }
    if let Some(expected) = named {
        let found = at
            .first()
            .filter(|e| e.seq == q.since)
            .map(|e| hex::encode(e.hash));
        if found.as_deref() != Some(expected.to_ascii_lowercase().as_str()) {
            return Err(Refusal::new(
                409,
                "cursor-mismatch",
                "Cursor not in the log",
                format!("entry {} is not the one the cursor read: the store lost entries it read and numbered new ones under them (a restore, a failover); export from 0 and compare", q.since),
            ));
        }
    }
    // entries are numbered without gaps up to the head: one missing is not skipped over (the
    // cursor would pass it)
    let until = head.min(from.saturating_add(limit as u64 - 1));
    if let Some(missing) = crate::audit::first_missing(from, until, &entries) {
        return Err(unreadable(format!("entry {missing} is missing")));
    }
    // every entry exported hashes as stored and links to the one before it (the cursor's, for
    // the first): an entry altered in the store is not handed on as if it were whole (a SIEM
    // can check the links it is given, not recompute the hashes)
    let start = match q.since {
        0 => Some(crate::audit::Head::default()),
        since => at
            .first()
            .filter(|e| e.seq == since)
            .map(|e| crate::audit::Head {
                seq: e.seq,
                hash: e.hash,
            }),
    };
    let Some(start) = start else {
        return Err(unreadable(format!("entry {} is missing", q.since)));
    };
    if let Err(broken) = entries
        .iter()
        .try_fold(start, |h, e| crate::audit::follows(&h, e))
    {
        return Err(unreadable(format!(
            "the log does not hold together there: {broken}"
        )));
    }
    let mut body = String::new();
    let names = crate::audit::fhir::Names {
        observer: &review.service,
        patient_id_system: &review.directory.patient_id_system,
        principal_system: &review.directory.provider_principal_system,
    };
    for e in &entries {
        match crate::audit::fhir::audit_event(e, &names) {
            Ok(resource) => {
                body.push_str(&resource.to_string());
                body.push('\n');
            }
            Err(err) => {
                tracing::error!(seq = e.seq, error = %err, "audit export: an entry could not be read");
                return Err(Refusal::new(
                    500,
                    "audit-entry-unreadable",
                    "Audit entry unreadable",
                    format!(
                        "entry {} could not be read; run `breakglass audit verify`",
                        e.seq
                    ),
                ));
            }
        }
    }
    let last_seq = entries.last().map_or(q.since, |e| e.seq);
    let last_hash = match entries.last() {
        Some(e) => Some(hex::encode(e.hash)),
        None if q.since == head => head_hash,
        None => None,
    };
    Ok((body, last_seq, last_hash))
}
