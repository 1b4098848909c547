// The clinician's tablet page (GET /tablet; bundled into static/tablet.js, loaded with `defer`).
// Each part runs only if the page has its elements (web/README.md, "Tablet page"):
// - #key-setup: the clinician's key, imported once and kept encrypted under a PIN;
// - #request: who the key is (GET /tablet/options), the data types as toggles, the patient id
//   (typed or scanned), the reason, the device name, the PIN, then the signed POST /v1/break-glass;
// - #result: the refusal, or the summary read with the granted token, a countdown, and the wipe
//   at the window's end or on #end.
// Nothing clinical is written to storage: localStorage holds the encrypted key and the device
// name only; the token and the data live in this script's memory and the DOM until the wipe.
// The logic lives in tablet-lib.mjs and lib.mjs (pure functions, tested in Node).

import { UserError, networkFrom, parseDomain, parseKeyRecord, signStructured, walletProvider, walletSign } from "./lib.mjs";
import {
  CLOSED_TEXT,
  ENDED_TEXT,
  DATA_TYPE_LABELS,
  DEVICE_STORAGE,
  SEND_WITHIN_S,
  TABLET_KEY_STORAGE,
  WARNINGS,
  breakGlassMessage,
  countdownText,
  decryptTabletKey,
  encryptTabletKey,
  formatRemaining,
  normalizeDevice,
  parseGrant,
  parseOptions,
  parsePatientId,
  patientFromScan,
  randomNonce,
  refusalText,
  requestAge,
  requestBody,
  summaryGroups,
  summaryNotes,
  summaryPath,
  walletAddress,
  walletTooSlowText,
  warningText,
} from "./tablet-lib.mjs";

const TOUCH_PX = 44;
const TICK_MS = 250;
const OPTIONS_RETRY_MS = 5000;
const SCAN_EVERY_MS = 200;
const SCAN_TIMEOUT_MS = 60_000;
// How long a request may go unanswered before the page says so (a stalled connection would
// keep the button busy for minutes).
const FETCH_TIMEOUT_MS = 15_000;
// How long a typed PIN stays in its field unused (the page's <meta name="breakglass-pin-idle-ms">
// may say otherwise): a tablet put down with a PIN in it would sign for whoever picks it up.
const PIN_IDLE_MS = 60_000;
// A grant whose answer was lost on the way (the connection dropped) is sent again, as signed,
// while it is this fresh (the service takes a request for 60 s): if the first never arrived,
// this one is granted; if it did, the service says so (`replayed-request`).
const RESEND_WITHIN_S = SEND_WITHIN_S;

const byId = (id) => document.getElementById(id);

function metaContent(name) {
  return document.querySelector(`meta[name="${name}"]`)?.getAttribute("content") ?? null;
}

const UNREACHABLE = "The server could not be reached. Check the connection and try again.";

/** An error of the connection, not an answer: the server may not have had the request. */
class NetworkError extends UserError {}

function messageOf(error) {
  if (error instanceof UserError) return error.message;
  if (error?.name === "AbortError") return "Stopped.";
  return `Something went wrong: ${error?.message ?? error}`;
}

/**
 * `fetch` and its JSON body (`{response, body}`; body null when it is not JSON), the two given
 * up on after `FETCH_TIMEOUT_MS` together (and on `signal`): a body that stalls halfway is a
 * timeout too. A connection that fails or stalls is a `NetworkError` with a sentence for the
 * clinician (browsers word it differently: Chromium "Failed to fetch", Safari "Load failed";
 * each a TypeError).
 */
async function fetchAnswer(url, init = {}) {
  // one controller of its own, aborted by the page's signal or the timer (no AbortSignal.any
  // or AbortSignal.timeout needed: Safari before 17.4 has neither of both)
  const controller = new AbortController();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    controller.abort();
  }, FETCH_TIMEOUT_MS);
  const stop = () => controller.abort();
  init.signal?.addEventListener("abort", stop, { once: true });
  try {
    const response = await fetch(url, { ...init, signal: controller.signal });
    let body = null;
    try {
      body = await response.json();
    } catch (error) {
      if (controller.signal.aborted) throw error; // stopped or timed out while it came
    }
    return { response, body };
  } catch (error) {
    if (init.signal?.aborted) throw error; // stopped by the page itself
    if (timedOut && error?.name === "AbortError") {
      throw new NetworkError(`The server did not answer within ${FETCH_TIMEOUT_MS / 1000} s. Check the connection and try again.`);
    }
    if (error instanceof TypeError) throw new NetworkError(UNREACHABLE);
    throw error;
  } finally {
    clearTimeout(timer);
    init.signal?.removeEventListener("abort", stop);
  }
}

function storage() {
  try {
    return window.localStorage;
  } catch {
    return null; // storage disabled
  }
}

/** Style set through the CSSOM, which a CSP without 'unsafe-inline' allows. */
function style(el, props) {
  if (el) Object.assign(el.style, props);
  return el;
}

// A base layout for a touch screen, of zero specificity (:where), so that any stylesheet of the
// page wins; adopted as a constructed stylesheet, which a CSP without 'unsafe-inline' allows
// (a <style> element it blocks). Browsers without constructed stylesheets keep the page's CSS.
const BASE_CSS = `
:where(body) { font-family: system-ui, sans-serif; font-size: 18px; line-height: 1.4; margin: 0; }
:where(main) { max-width: 52rem; margin: 0 auto; padding: 1rem; }
:where(#key-setup, #request) :where(label) { display: block; margin-top: 1rem; font-weight: 600; }
:where(#data-types) :where(label) { margin-top: 0; font-weight: normal; }
:where(#key-setup, #request) :where(input:not([type=checkbox]), textarea) { display: block; width: 100%; font: inherit; padding: 0.5rem; }
:where(#patient) { font-family: ui-monospace, monospace; }
:where(#reason) { min-height: 6rem; }
:where(#data-types) { border: 1px solid #888; border-radius: 0.5rem; margin-top: 1rem; }
:where(.data-type-refusal) { color: #555; font-size: 0.9em; }
:where(button) { font: inherit; margin-top: 1rem; padding: 0.5rem 1.25rem; border-radius: 0.5rem; }
:where(#submit) { display: block; width: 100%; background: #b00020; color: #fff; border: 0; font-weight: 700; }
:where(#submit:disabled) { background: #777; }
:where(#end) { background: #222; color: #fff; border: 0; }
:where(#scanner) { display: block; width: 100%; max-height: 50vh; background: #000; margin-top: 0.5rem; }
:where(#scanner[hidden]) { display: none; }
:where(#refusal) { border-left: 0.4rem solid #b00020; background: #fdecea; padding: 0.5rem 1rem; }
:where(#summary section) { margin: 1rem 0; }
:where(#summary h3) { margin: 0 0 0.25rem; font-size: 1.1rem; }
:where(#summary li) { margin: 0.25rem 0; }
:where(.summary-note) { border-left: 0.4rem solid #b26a00; background: #fff4e5; padding: 0.5rem 1rem; }
:where(#countdown) { font-size: 1.5rem; font-weight: 700; font-variant-numeric: tabular-nums; }
:where(#status[data-kind="error"]) { color: #b00020; font-weight: 600; }
:where(:focus-visible) { outline: 3px solid #1a73e8; outline-offset: 2px; }
`;

function adoptBaseStyles() {
  try {
    const sheet = new CSSStyleSheet();
    sheet.replaceSync(BASE_CSS);
    document.adoptedStyleSheets = [sheet, ...document.adoptedStyleSheets];
  } catch {
    // no constructed stylesheets: the page's CSS and the touch-target floors below
  }
}

/** Touch targets of at least 44 px (WCAG 2.5.5) and 16 px text (no zoom on focus), whatever the page's CSS. */
function ensureTouchTargets(root) {
  for (const el of root.querySelectorAll("button, input:not([type=hidden]):not([type=checkbox]):not([type=radio]), textarea, select")) {
    style(el, { minHeight: `${TOUCH_PX}px`, boxSizing: "border-box" });
    if (el.tagName === "BUTTON") style(el, { minWidth: `${TOUCH_PX}px` });
    if (Number.parseFloat(getComputedStyle(el).fontSize) < 16) style(el, { fontSize: "16px" });
  }
}

function init() {
  const setup = byId("key-setup");
  const request = byId("request");
  const result = byId("result");
  if (!setup && !request) return;
  const status = byId("status");
  const network = networkFrom(metaContent("breakglass-network"));
  const keyInput = byId("key");
  const newPin = byId("new-pin");
  const importButton = byId("import-key");
  const forgetButton = byId("forget-key"); // optional
  const who = byId("who");
  const patient = byId("patient");
  const scanButton = byId("scan");
  const video = byId("scanner");
  const fieldset = byId("data-types");
  const reason = byId("reason");
  const device = byId("device");
  const pin = byId("pin");
  const submit = byId("submit");
  const refusal = byId("refusal");
  const summary = byId("summary");
  const countdown = byId("countdown");
  const end = byId("end");
  const form = request?.tagName === "FORM" ? request : request?.closest("form") ?? null;

  // clockOffsetMs: the server's clock less this tablet's, from the Date of its last answer (a
  // request is refused as stale 60 s off the server's clock: the tablet's own may be anything)
  const state = { principal: null, wallet: null, options: null, busy: false, access: null, optionsTimer: null, scan: null, clockOffsetMs: 0, clockNote: null };
  const pinIdleMs = Number.parseInt(metaContent("breakglass-pin-idle-ms") ?? "", 10) || PIN_IDLE_MS;

  function report(text, kind, { focus = kind === "error" } = {}) {
    if (!status) return;
    status.textContent = text;
    status.dataset.kind = kind;
    if (focus) {
      if (!status.hasAttribute("tabindex")) status.setAttribute("tabindex", "-1");
      status.focus();
    }
  }

  function loadRecord() {
    try {
      return parseKeyRecord(storage()?.getItem(TABLET_KEY_STORAGE));
    } catch {
      return null;
    }
  }

  // -------------------------------------------------------------------------------------------
  // the key

  function showKeySetup() {
    if (setup) setup.hidden = false;
    if (request) request.hidden = true;
    if (result) result.hidden = true;
    state.principal = null;
    keyInput?.focus();
  }

  function showRequest(principal) {
    state.principal = principal;
    if (setup) setup.hidden = true;
    if (request) request.hidden = false;
    if (who) who.textContent = principal;
    const viaWallet = state.wallet !== null;
    if (pin) pin.hidden = viaWallet;
    for (const label of document.querySelectorAll('label[for="pin"]')) label.hidden = viaWallet;
    loadOptions();
  }

  importButton?.addEventListener("click", async () => {
    importButton.disabled = true;
    report("Encrypting the key under the PIN…", "busy");
    try {
      const record = await encryptTabletKey(keyInput?.value ?? "", newPin?.value ?? "", { network });
      const store = storage();
      if (!store) throw new UserError("This browser does not allow storing the key (local storage is disabled).");
      store.setItem(TABLET_KEY_STORAGE, JSON.stringify(record));
      if (keyInput) keyInput.value = "";
      if (newPin) newPin.value = "";
      state.wallet = null;
      report(`Key of ${record.principal} stored on this tablet, encrypted under the PIN.`, "info");
      showRequest(record.principal);
      patient?.focus();
    } catch (error) {
      report(messageOf(error), "error");
    } finally {
      importButton.disabled = false;
    }
  });

  // two taps, a few seconds apart at most: one gloved slip next to "Sign and open" would remove
  // the key, to be pasted again in hex in the middle of an emergency
  let forgetArmed = null;
  forgetButton?.addEventListener("click", () => {
    if (!forgetArmed) {
      const label = forgetButton.textContent;
      forgetButton.textContent = "Tap again to remove your key from this tablet";
      forgetArmed = setTimeout(() => {
        forgetArmed = null;
        forgetButton.textContent = label;
      }, 5000);
      forgetArmed.label = label;
      report("Your key stays on this tablet unless you tap that button again.", "info");
      return;
    }
    clearTimeout(forgetArmed);
    forgetButton.textContent = forgetArmed.label;
    forgetArmed = null;
    closeAccess(null);
    storage()?.removeItem(TABLET_KEY_STORAGE);
    state.wallet = null;
    showKeySetup();
    report("The key was removed from this tablet.", "info");
  });

  const provider = walletProvider(window);
  if (provider && setup) {
    const walletButton = document.createElement("button");
    walletButton.type = "button";
    walletButton.id = "use-wallet";
    walletButton.textContent = "Use my Stacks wallet instead";
    setup.append(walletButton);
    walletButton.addEventListener("click", async () => {
      walletButton.disabled = true;
      report("Asking the wallet for its address…", "busy");
      try {
        const address = await walletAddress(provider, network);
        state.wallet = provider;
        report(`Signing with the wallet of ${address}.`, "info");
        showRequest(address);
      } catch (error) {
        report(messageOf(error), "error");
      } finally {
        walletButton.disabled = false;
      }
    });
  }

  // -------------------------------------------------------------------------------------------
  // who the key is, and the data types it may open

  function renderDataTypes(dataTypes) {
    if (!fieldset) return;
    for (const child of [...fieldset.children]) if (child.tagName !== "LEGEND") child.remove();
    for (const d of dataTypes) {
      const id = `dt-${d.dataType}`;
      const row = style(document.createElement("div"), { display: "flex", flexWrap: "wrap", alignItems: "center", columnGap: "0.75rem", margin: "0.25rem 0" });
      row.className = "data-type";
      const label = style(document.createElement("label"), {
        display: "inline-flex",
        alignItems: "center",
        gap: "0.75rem",
        minHeight: `${TOUCH_PX}px`,
        minWidth: "15rem",
        padding: "0.25rem 0.75rem",
        boxSizing: "border-box",
        cursor: d.allowed ? "pointer" : "not-allowed",
        opacity: d.allowed ? "1" : "0.6",
      });
      label.htmlFor = id;
      const input = style(document.createElement("input"), { width: "28px", height: "28px", margin: "0", flex: "none" });
      input.type = "checkbox";
      input.name = "data-type";
      input.value = d.dataType;
      input.id = id;
      if (!d.allowed) {
        // refused, yet focusable: a keyboard or screen reader reaches it and hears why
        // (aria-describedby below), where `disabled` would skip it; it cannot be checked
        input.setAttribute("aria-disabled", "true");
        input.addEventListener("click", (e) => e.preventDefault());
      }
      label.append(input, document.createTextNode(d.label));
      row.append(label);
      const noteText = d.allowed ? (d.windowMinutes ? `opens for ${d.windowMinutes} min` : "") : d.reason;
      if (noteText) {
        const note = document.createElement("span");
        note.id = `${id}-note`;
        note.className = d.allowed ? "data-type-window" : "data-type-refusal";
        note.textContent = noteText;
        input.setAttribute("aria-describedby", note.id);
        row.append(note);
      }
      fieldset.append(row);
    }
  }

  async function loadOptions() {
    clearTimeout(state.optionsTimer);
    const principal = state.principal;
    if (!principal) return;
    if (submit) submit.disabled = true;
    state.options = null;
    report("Loading what you may open…", "busy");
    try {
      const asked = Date.now();
      const { response, body } = await fetchAnswer(`/tablet/options?principal=${encodeURIComponent(principal)}`, {
        headers: { Accept: "application/json" },
        credentials: "same-origin",
        cache: "no-store",
      });
      learnClock(response, asked);
      if (!response.ok) throw new UserError(refusalText(body, response.status, { during: "options" }).text);
      if (state.principal !== principal) return;
      const options = parseOptions(body, principal);
      state.options = options;
      if (who) who.textContent = `${principal} — ${options.role ?? "no provider role"} (${options.status})${state.clockNote ? `. ${state.clockNote}` : ""}`;
      renderDataTypes(options.dataTypes);
      ensureTouchTargets(request);
      if (!options.usable) {
        report(options.why, "error", { focus: false });
        return;
      }
      if (submit) submit.disabled = false;
      report(
        state.wallet
          ? "Ready: enter the patient id, choose the data and write the reason."
          : "Ready: enter the patient id, choose the data, write the reason and your PIN.",
        "info",
      );
    } catch (error) {
      if (state.principal !== principal) return;
      report(`${messageOf(error)} Trying again in ${OPTIONS_RETRY_MS / 1000} s.`, "error", { focus: false });
      state.optionsTimer = setTimeout(loadOptions, OPTIONS_RETRY_MS);
    }
  }

  /** The server's clock from an answer's Date (whole seconds), less this tablet's then. */
  function learnClock(response, askedAt) {
    const server = Date.parse(response.headers.get("Date") ?? "");
    if (!Number.isFinite(server)) return;
    const here = (askedAt + Date.now()) / 2;
    // within the header's second: this tablet's clock is taken as right
    const offset = Math.abs(server + 500 - here) <= 1500 ? 0 : server + 500 - here;
    state.clockOffsetMs = offset;
    state.clockNote = null;
    if (Math.abs(offset) >= 30_000) {
      const minutes = Math.round(Math.abs(offset) / 60_000);
      const off = minutes >= 1 ? `${minutes} min` : `${Math.round(Math.abs(offset) / 1000)} s`;
      state.clockNote = `This tablet's clock is ${off} ${offset > 0 ? "behind" : "ahead"}: requests are dated by the service's clock.`;
    }
  }

  /** Now, as the service's clock has it (unix seconds). */
  function serverNow() {
    return Math.floor((Date.now() + state.clockOffsetMs) / 1000);
  }

  // -------------------------------------------------------------------------------------------
  // the request

  function hideRefusal() {
    if (!refusal) return;
    refusal.hidden = true;
    refusal.replaceChildren();
  }

  function showRefusal(r) {
    if (result) result.hidden = false;
    if (!refusal) {
      report(r.text, "error");
      return;
    }
    const heading = document.createElement("strong");
    heading.textContent = `${r.heading}.`;
    const code = document.createElement("code");
    code.className = "refusal-code";
    code.textContent = r.code;
    refusal.replaceChildren(heading, ` ${r.sentence}${r.retry ? ` ${r.retry}` : ""}${r.next ? ` ${r.next}` : ""} (code: `, code, ")");
    refusal.hidden = false;
    report("", "info");
    if (!refusal.hasAttribute("tabindex")) refusal.setAttribute("tabindex", "-1");
    refusal.focus();
  }

  function setBusy(busy) {
    state.busy = busy;
    for (const b of [submit, scanButton]) {
      if (!b) continue;
      if (busy) b.setAttribute("aria-busy", "true");
      else b.removeAttribute("aria-busy");
    }
    if (submit) submit.disabled = busy || !state.options?.usable;
  }

  // The PIN's key derivation (PBKDF2, 600,000 rounds) takes about a tenth of a second: it starts
  // as soon as the PIN field holds a full PIN, so that a tap on "Sign and open" does not wait for
  // it. The key stays in this closure only until the submit (or a change of PIN, or a minute).
  let unlocking = null;
  function forgetUnlock() {
    if (unlocking) clearTimeout(unlocking.timer);
    unlocking = null;
  }
  // a PIN left in its field is cleared after `pinIdleMs` without a keystroke, and whenever the
  // page is hidden (the tablet locked, another app): with it the key it unlocked
  let pinIdle = null;
  function clearPin(text) {
    clearTimeout(pinIdle);
    pinIdle = null;
    forgetUnlock();
    if (!pin?.value) return;
    pin.value = "";
    if (text) report(text, "info", { focus: false });
  }
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "hidden") clearPin(null);
  });
  pin?.addEventListener("input", () => {
    forgetUnlock();
    clearTimeout(pinIdle);
    const idle = pinIdleMs % 60_000 === 0 ? `${pinIdleMs / 60_000} min` : `${Math.max(1, Math.round(pinIdleMs / 1000))} s`;
    pinIdle = setTimeout(() => clearPin(`The PIN was cleared after ${idle} unused: type it again to sign.`), pinIdleMs);
    const value = pin.value;
    const record = loadRecord();
    if (!record || state.wallet || !/^\d{6,}$/.test(value)) return;
    const promise = decryptTabletKey(record, value);
    promise.catch(() => {}); // a wrong PIN is reported at the submit
    unlocking = { pin: value, promise, timer: setTimeout(forgetUnlock, 60_000) };
  });

  async function submitRequest() {
    if (state.busy || state.access || !state.principal) return;
    const clickedAt = performance.now();
    setBusy(true);
    hideRefusal();
    if (result && !state.access) result.hidden = true;
    report("Signing the request…", "busy");
    let key = null;
    const pinValue = pin?.value ?? "";
    // the key the PIN unlocked while it was typed, taken before the field is cleared
    const ahead = unlocking && unlocking.pin === pinValue ? unlocking.promise : null;
    clearPin(null);
    try {
      const domainHex = metaContent("breakglass-domain");
      if (!domainHex) throw new UserError("This page has no signing domain; reload it.");
      const domain = parseDomain(domainHex);
      const patientId = parsePatientId(patient?.value);
      const dataTypes = fieldset ? [...fieldset.querySelectorAll('input[name="data-type"]:checked:not([aria-disabled="true"])')].map((i) => i.value) : [];
      const deviceName = normalizeDevice(device?.value);
      // dated now, by the service's clock: `datedAt` (monotonic) to tell its age by
      const dated = () => {
        const issuedAt = serverNow();
        const message = breakGlassMessage({ patient: patientId, dataTypes, reason: reason?.value ?? "", nonce: randomNonce(), issuedAt, device: deviceName });
        return { message, issuedAt, datedAt: performance.now() };
      };
      let request;
      let signature;
      if (state.wallet) {
        ({ signature, ...request } = await walletSigned(dated, domain));
      } else {
        request = dated();
        const record = loadRecord();
        if (!record) {
          showKeySetup();
          throw new UserError("No key is stored on this tablet: import it first.");
        }
        key = await (ahead ?? decryptTabletKey(record, pinValue));
        signature = signStructured(request.message, domain, key);
        key = null; // dropped: only the signature leaves this function
      }
      const { message, issuedAt, datedAt } = request;
      try {
        if (deviceName) storage()?.setItem(DEVICE_STORAGE, deviceName);
        else storage()?.removeItem(DEVICE_STORAGE);
      } catch {
        // storage full or disabled: the device name is a convenience
      }
      report("Sending the request…", "busy");
      let sentAt = performance.now();
      let wallAt = Date.now();
      const signed = JSON.stringify(requestBody(message, signature, domain));
      const send = () =>
        fetchAnswer("/v1/break-glass", {
          method: "POST",
          headers: { "Content-Type": "application/json", Accept: "application/json" },
          body: signed,
          credentials: "same-origin",
          cache: "no-store",
        });
      let answer;
      try {
        answer = await send();
      } catch (error) {
        // the answer lost: the same signed request once more while it is fresh (a new one
        // would be a second access if the first was granted)
        if (!(error instanceof NetworkError) || requestAge(issuedAt, serverNow(), performance.now() - datedAt) > RESEND_WITHIN_S) throw error;
        report("The connection dropped: sending the same request again…", "busy");
        sentAt = performance.now();
        wallAt = Date.now();
        answer = await send();
      }
      const { response, body } = answer;
      // the service's clock as it answered (a tablet clock corrected meanwhile, or off from the
      // start): the next request is dated by it
      learnClock(response, wallAt);
      if (!response.ok) {
        const refused = refusalText(body, response.status, { during: "grant", retryAfter: response.headers.get("Retry-After") });
        if (refused.code === "replayed-request") {
          // its nonce is new (drawn for it): sent again after a lost answer, by this page or by
          // the browser itself (Chromium sends a request again when a kept-alive connection
          // drops before the answer), the first copy arrived, and its answer was lost
          refused.sentence = "Your request reached the service, and may have been granted, but its answer was lost on the way back.";
          refused.next = "Sign again to open the record: if the first was granted, a second access is recorded, and reviewers see both.";
        }
        showRefusal(refused);
        return;
      }
      const grant = parseGrant(body);
      startAccess(grant, { patientId, dataTypes, clickedAt, sentAt, wallAt });
    } catch (error) {
      report(messageOf(error), "error");
    } finally {
      key = null;
      setBusy(false);
    }
  }

  /**
   * A request signed by the wallet: `{message, issuedAt, datedAt, signature}`, `dated()` giving
   * the message. A person may leave the wallet's prompt open for minutes, and the service
   * refuses a request dated more than 60 s from its clock (`stale-request`): one approved later
   * than `SEND_WITHIN_S` is not sent. The wallet is asked once more, for a request dated anew,
   * saying why; if that one too comes back late, the clinician is told to tap again.
   */
  async function walletSigned(dated, domain) {
    for (let again = false; ; again = true) {
      const request = dated();
      if (!again) report("Waiting for the wallet to sign…", "busy");
      const signature = await walletSign(state.wallet, request.message, domain);
      const age = requestAge(request.issuedAt, serverNow(), performance.now() - request.datedAt);
      if (age <= SEND_WITHIN_S) return { ...request, signature };
      const button = submit?.textContent.trim() || undefined;
      if (again) throw new UserError(walletTooSlowText(age, { again, button }));
      report(walletTooSlowText(age), "busy");
    }
  }

  submit?.addEventListener("click", (event) => {
    event.preventDefault();
    submitRequest();
  });
  form?.addEventListener("submit", (event) => {
    event.preventDefault();
    submitRequest();
  });
  // the sections are not forms: Enter in a PIN field acts as its button
  for (const [field, button] of [[pin, submit], [newPin, importButton]]) {
    field?.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.isComposing && !field.form) {
        event.preventDefault();
        button?.click();
      }
    });
  }

  if (device) {
    try {
      device.value ||= storage()?.getItem(DEVICE_STORAGE) ?? "";
    } catch {
      // storage disabled
    }
  }

  // -------------------------------------------------------------------------------------------
  // the access: the summary, the countdown, the wipe

  function startAccess(grant, ctx) {
    const ms = grant.expiresIn * 1000;
    const access = {
      token: grant.token,
      // counted from the request's sending (the server counts from its grant, a little later);
      // the earlier of the monotonic and the wall clock, so a sleeping tablet does not stretch it
      deadline: ctx.sentAt + ms,
      wallDeadline: ctx.wallAt + ms,
      warned: new Set(WARNINGS.filter((w) => w >= grant.expiresIn)),
      controller: new AbortController(),
      timer: null,
      shown: "",
    };
    state.access = access;
    stopScan();
    if (reason) reason.value = ""; // the reason was sent; it does not stay on screen
    if (request) request.hidden = true;
    if (result) result.hidden = false;
    hideRefusal();
    summary?.replaceChildren();
    if (end) end.hidden = false;
    if (countdown) {
      countdown.setAttribute("role", "timer"); // read on demand: a per-second announcement would drown everything else
      countdown.setAttribute("aria-live", "off");
    }
    const names = ctx.dataTypes.map((d) => DATA_TYPE_LABELS[d] ?? d).join(", ");
    report(`Access granted for ${formatRemaining(grant.expiresIn)} to ${names}. Loading the record…`, "busy");
    access.timer = setInterval(() => tick(access), TICK_MS);
    tick(access);
    if (state.access === access) loadSummary(access, ctx);
  }

  function remaining(access) {
    return Math.min(access.deadline - performance.now(), access.wallDeadline - Date.now()) / 1000;
  }

  function tick(access) {
    if (state.access !== access) return;
    const left = remaining(access);
    if (left <= 0) {
      closeAccess(CLOSED_TEXT);
      return;
    }
    const text = countdownText(left);
    if (countdown && text !== access.shown) {
      countdown.textContent = text;
      access.shown = text;
    }
    for (const w of WARNINGS) {
      if (left <= w && !access.warned.has(w)) {
        access.warned.add(w);
        report(warningText(w), "info");
      }
    }
  }

  // after a read that failed for a reason that may pass (the connection, the service busy, an
  // update being recorded), read again with the same token while the window is open: breaking
  // the glass again would record a second access and tell the patient twice
  let readAgain = null;
  function offerReadAgain(access, ctx) {
    if (!result || state.access !== access) return;
    if (!readAgain) {
      readAgain = document.createElement("button");
      readAgain.type = "button";
      readAgain.id = "read-again";
      readAgain.textContent = "Read the record again";
      end?.parentElement ? end.parentElement.insertBefore(readAgain, end) : result.append(readAgain);
      ensureTouchTargets(result);
    }
    readAgain.hidden = false;
    readAgain.onclick = () => {
      readAgain.hidden = true;
      hideRefusal();
      report("Reading the record again…", "busy");
      loadSummary(access, ctx);
    };
  }
  const passing = (status, code) =>
    (status >= 500 && !["summary-integrity", "internal-error"].includes(code)) || status === 408 || status === 429 || code === "summary-update-pending";

  async function loadSummary(access, ctx) {
    if (readAgain) readAgain.hidden = true;
    try {
      const { response, body } = await fetchAnswer(summaryPath(ctx.patientId), {
        headers: { Authorization: `Bearer ${access.token}`, Accept: "application/fhir+json" },
        credentials: "same-origin",
        cache: "no-store",
        signal: access.controller.signal,
      });
      if (state.access !== access) return;
      if (!response.ok) {
        const refused = refusalText(body, response.status, { during: "read", retryAfter: response.headers.get("Retry-After") });
        showRefusal(refused);
        if (passing(response.status, refused.code)) offerReadAgain(access, ctx);
        return;
      }
      const groups = summaryGroups(body);
      const notes = summaryNotes(body);
      if (state.access !== access || !summary) return;
      renderSummary(groups, notes);
      const count = groups.reduce((n, g) => n + g.lines.length, 0);
      const shown = count ? `Showing ${count} record${count === 1 ? "" : "s"}.` : "Nothing of the kinds you opened is on record for this patient.";
      report(notes.length ? `${shown} Read the note above the records first.` : shown, "info");
      if (!summary.hasAttribute("tabindex")) summary.setAttribute("tabindex", "-1");
      summary.focus();
      document.dispatchEvent(new CustomEvent("breakglass:data", { detail: { ms: performance.now() - ctx.clickedAt } }));
    } catch (error) {
      if (state.access !== access || error?.name === "AbortError") return;
      showRefusal({ heading: "The record could not be read", sentence: messageOf(error), retry: null, next: null, code: error instanceof NetworkError ? "network-error" : "client-error", text: messageOf(error) });
      if (error instanceof NetworkError) offerReadAgain(access, ctx);
    }
  }

  function renderSummary(groups, notes) {
    // the server's notes on the summary itself come first, where the focus lands
    const noted = notes.map((text) => {
      const p = document.createElement("p");
      p.className = "summary-note";
      const strong = document.createElement("strong");
      strong.textContent = "Note: ";
      p.append(strong, text);
      return p;
    });
    const sections = groups.map((g, i) => {
      const section = document.createElement("section");
      section.dataset.resourceType = g.type;
      const h = document.createElement("h3");
      h.id = `summary-${i}`;
      h.textContent = g.title;
      section.setAttribute("aria-labelledby", h.id);
      const ul = document.createElement("ul");
      for (const line of g.lines) {
        const li = document.createElement("li");
        li.textContent = line;
        ul.append(li);
      }
      section.append(h, ul);
      return section;
    });
    if (sections.length === 0) {
      const p = document.createElement("p");
      p.textContent = "Nothing of the kinds you opened is on record for this patient.";
      sections.push(p);
    }
    summary.replaceChildren(...noted, ...sections);
  }

  /** Ends the access on this screen: the data's nodes removed, the token dropped. */
  function closeAccess(text) {
    const access = state.access;
    if (!access) return;
    state.access = null;
    clearInterval(access.timer);
    access.controller.abort();
    access.token = null;
    summary?.replaceChildren();
    summary?.removeAttribute("tabindex");
    if (countdown) countdown.textContent = "";
    if (end) end.hidden = true;
    if (readAgain) readAgain.hidden = true;
    hideRefusal();
    if (result) result.hidden = true;
    if (patient) patient.value = "";
    if (reason) reason.value = "";
    for (const box of fieldset?.querySelectorAll('input[name="data-type"]') ?? []) box.checked = false;
    if (request) request.hidden = false;
    if (text) report(text, "closed", { focus: true });
  }

  end?.addEventListener("click", () => closeAccess(ENDED_TEXT));
  if (end) end.hidden = true;
  // leaving the page (or its being put in the back-forward cache) wipes it too
  window.addEventListener("pagehide", () => {
    closeAccess(null);
    stopScan();
  });

  // -------------------------------------------------------------------------------------------
  // the patient id from a QR code (where the browser has a BarcodeDetector)

  function stopScan(text) {
    const s = state.scan;
    if (!s) return;
    state.scan = null;
    clearTimeout(s.timer);
    for (const track of s.stream?.getTracks?.() ?? []) track.stop();
    if (video) {
      video.srcObject = null;
      video.hidden = true;
    }
    if (scanButton) {
      scanButton.textContent = s.label;
      scanButton.setAttribute("aria-pressed", "false");
    }
    if (text) report(text, "info");
  }

  async function startScan() {
    let detector;
    try {
      detector = new window.BarcodeDetector({ formats: ["qr_code"] });
    } catch {
      detector = new window.BarcodeDetector();
    }
    const s = { stream: null, timer: null, label: scanButton.textContent, started: performance.now() };
    state.scan = s;
    scanButton.textContent = "Stop the camera";
    scanButton.setAttribute("aria-pressed", "true");
    report("Point the camera at the patient's QR code.", "busy");
    try {
      s.stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" }, audio: false });
    } catch (error) {
      stopScan();
      report(`The camera could not be opened (${error?.name ?? "error"}): type the patient id.`, "error");
      return;
    }
    if (state.scan !== s) {
      for (const track of s.stream.getTracks()) track.stop();
      return;
    }
    if (video) {
      video.muted = true;
      video.srcObject = s.stream;
      video.hidden = false;
      await video.play().catch(() => {});
    }
    const look = async () => {
      if (state.scan !== s) return;
      if (performance.now() - s.started > SCAN_TIMEOUT_MS) {
        stopScan("No patient QR code was found; the camera is off.");
        return;
      }
      try {
        for (const code of await detector.detect(video)) {
          const id = patientFromScan(code?.rawValue);
          if (id && state.scan === s) {
            if (patient) patient.value = id;
            stopScan("Patient id scanned.");
            patient?.focus();
            return;
          }
        }
      } catch {
        // the video has no frame yet: look again
      }
      if (state.scan === s) s.timer = setTimeout(look, SCAN_EVERY_MS);
    };
    look();
  }

  if (scanButton) {
    const canScan = typeof window.BarcodeDetector === "function" && typeof navigator.mediaDevices?.getUserMedia === "function";
    scanButton.hidden = !canScan;
    if (canScan) {
      scanButton.setAttribute("aria-pressed", "false");
      scanButton.addEventListener("click", () => (state.scan ? stopScan("The camera is off.") : startScan()));
    }
  }

  // -------------------------------------------------------------------------------------------
  // start

  adoptBaseStyles();
  for (const root of [setup, request, result]) if (root) ensureTouchTargets(root);
  if (submit) submit.disabled = true;
  const record = loadRecord();
  if (record) showRequest(record.principal);
  else if (setup) showKeySetup();
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
else init();
