// The reviewer pages' browser code (bundled into static/review.js; served as /static/review.js and
// loaded with `defer`). Each part runs only on a page that has its elements:
// - sign-in (/review/sign-in): #key-import, #key-unlock, #sign-in-wallet, #status;
// - a verdict (/review/accesses/{id}): form#verdict with #verdict-passphrase, #verdict-status and
//   <meta name="breakglass-domain">;
// - #chain-state[data-refresh]: the page reloads every 2 s until data-state is confirmed or failed.
// The logic lives in lib.mjs (pure functions, tested in Node); this file is DOM wiring only.

import {
  STORAGE_KEY,
  UserError,
  decryptKey,
  encryptKey,
  bytesToHex,
  networkFrom,
  newNoteSalt,
  noteHash,
  parseChallenge,
  parseDomain,
  parseKeyRecord,
  problemText,
  reviewMessage,
  sameOriginPath,
  signStructured,
  walletProvider,
  walletSign,
} from "./lib.mjs";

const REFRESH_MS = 2000;

const byId = (id) => document.getElementById(id);

function metaContent(name) {
  return document.querySelector(`meta[name="${name}"]`)?.getAttribute("content") ?? null;
}

function messageOf(error) {
  if (error instanceof UserError) return error.message;
  if (error instanceof TypeError && /fetch|network/i.test(error.message)) {
    return "The server could not be reached. Check the connection and try again.";
  }
  return `Something went wrong: ${error?.message ?? error}`;
}

/** Puts text into a status element; an error also takes the focus, so it is read out. */
function report(el, text, kind) {
  if (!el) return;
  el.textContent = text;
  el.dataset.kind = kind;
  if (kind === "error") {
    if (!el.hasAttribute("tabindex")) el.setAttribute("tabindex", "-1");
    el.focus();
  }
}

function setBusy(buttons, busy) {
  for (const b of buttons) {
    if (!b) continue;
    b.disabled = busy;
    if (busy) b.setAttribute("aria-busy", "true");
    else b.removeAttribute("aria-busy");
  }
}

function loadRecord() {
  try {
    return parseKeyRecord(window.localStorage.getItem(STORAGE_KEY));
  } catch {
    return null; // storage disabled
  }
}

async function readJson(response) {
  try {
    return await response.json();
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------------------------
// sign-in page

function initSignIn() {
  const importSection = byId("key-import");
  const unlockSection = byId("key-unlock");
  const walletButton = byId("sign-in-wallet");
  const status = byId("status");
  if (!importSection && !unlockSection && !walletButton) return;
  const network = networkFrom(metaContent("breakglass-network"));
  const keyInput = byId("key");
  const newPassphrase = byId("new-passphrase");
  const importButton = byId("import-key");
  const passphrase = byId("passphrase");
  const signInButton = byId("sign-in");
  const forgetButton = byId("forget-key");
  const buttons = [importButton, signInButton, forgetButton, walletButton];

  function principalElement() {
    let el = byId("key-principal");
    if (!el && unlockSection) {
      el = document.createElement("p");
      el.id = "key-principal";
      unlockSection.prepend(el);
    }
    return el;
  }

  function render() {
    const record = loadRecord();
    if (importSection) importSection.hidden = record !== null;
    if (unlockSection) unlockSection.hidden = record === null;
    const principal = principalElement();
    if (principal) principal.textContent = record ? record.principal : "";
    return record;
  }

  async function signIn(sign) {
    const challengeResponse = await fetch("/review/challenge", {
      method: "POST",
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    });
    const challengeBody = await readJson(challengeResponse);
    if (!challengeResponse.ok) throw new UserError(problemText(challengeBody, challengeResponse.status));
    const challenge = parseChallenge(challengeBody);
    const signature = await sign(challenge);
    const response = await fetch("/review/sign-in", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ message: challenge.messageHex, signature }),
      credentials: "same-origin",
    });
    const body = await readJson(response);
    if (!response.ok) throw new UserError(problemText(body, response.status));
    report(status, "Signed in.", "info");
    window.location.assign(sameOriginPath(body?.redirect));
  }

  async function run(busyText, work) {
    setBusy(buttons, true);
    report(status, busyText, "busy");
    try {
      await work();
    } catch (error) {
      report(status, messageOf(error), "error");
    } finally {
      setBusy(buttons, false);
    }
  }

  importButton?.addEventListener("click", () =>
    run("Encrypting the key…", async () => {
      const record = await encryptKey(keyInput?.value ?? "", newPassphrase?.value ?? "", { network });
      try {
        window.localStorage.setItem(STORAGE_KEY, JSON.stringify(record));
      } catch {
        throw new UserError("This browser does not allow storing the key (local storage is disabled).");
      }
      if (keyInput) keyInput.value = "";
      if (newPassphrase) newPassphrase.value = "";
      render();
      report(status, `Key of ${record.principal} stored in this browser, encrypted. Enter its passphrase to sign in.`, "info");
      passphrase?.focus();
    }),
  );

  signInButton?.addEventListener("click", () =>
    run("Signing in…", async () => {
      const record = loadRecord();
      if (!record) {
        render();
        throw new UserError("No key is stored in this browser: import it first.");
      }
      const key = await decryptKey(record, passphrase?.value ?? "");
      await signIn((challenge) => signStructured(challenge.message, challenge.domain, key));
      if (passphrase) passphrase.value = "";
    }),
  );

  // the sections are not forms: Enter in a passphrase field acts as its button
  for (const [field, button] of [[passphrase, signInButton], [newPassphrase, importButton]]) {
    field?.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.isComposing) {
        event.preventDefault();
        button?.click();
      }
    });
  }

  forgetButton?.addEventListener("click", () => {
    try {
      window.localStorage.removeItem(STORAGE_KEY);
    } catch {
      // storage disabled: nothing was stored
    }
    render();
    report(status, "The key was removed from this browser.", "info");
    keyInput?.focus();
  });

  const provider = walletProvider(window);
  if (walletButton && provider) {
    walletButton.hidden = false;
    walletButton.addEventListener("click", () =>
      run("Waiting for the wallet…", () =>
        signIn((challenge) => walletSign(provider, challenge.message, challenge.domain)),
      ),
    );
  }

  render();
}

// ---------------------------------------------------------------------------------------------
// access page: the verdict

let submitting = false;

function initVerdict() {
  const form = byId("verdict");
  if (!(form instanceof HTMLFormElement)) return;
  const status = byId("verdict-status");
  const passphrase = byId("verdict-passphrase");
  const signatureInput = form.querySelector('input[name="signature"]');
  const saltInput = form.querySelector('input[name="note_salt"]');
  const submitButton = form.querySelector('button[type="submit"], input[type="submit"]');
  let walletButton = null;

  async function signWith(sign) {
    const verdict = form.querySelector('input[name="verdict"]:checked')?.value;
    if (!verdict) throw new UserError("Choose a verdict first.");
    const domainHex = metaContent("breakglass-domain");
    if (!domainHex) throw new UserError("This page has no signing domain; reload it.");
    const domain = parseDomain(domainHex);
    const note = form.querySelector('textarea[name="note"]')?.value ?? "";
    if (!signatureInput || !saltInput) throw new UserError("This page's form has no signature or salt field; reload it.");
    const salt = newNoteSalt();
    const message = reviewMessage({
      accessId: form.dataset.accessId,
      verdict,
      noteHash: await noteHash(note, salt),
    });
    const signature = await sign(message, domain);
    signatureInput.value = signature;
    saltInput.value = bytesToHex(salt);
    if (passphrase) passphrase.value = "";
    report(status, "Signed. Submitting the verdict…", "busy");
    submitting = true;
    form.submit(); // a native post: csrf, verdict, note, revoke, signature, note_salt (the passphrase has no name)
  }

  async function run(sign) {
    setBusy([submitButton, walletButton], true);
    report(status, "Signing the verdict…", "busy");
    try {
      await signWith(sign);
    } catch (error) {
      submitting = false;
      setBusy([submitButton, walletButton], false);
      report(status, messageOf(error), "error");
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (submitting) return;
    run(async (message, domain) => {
      const record = loadRecord();
      if (!record) {
        throw new UserError("No key is stored in this browser: sign in again to import it (or use a wallet).");
      }
      const key = await decryptKey(record, passphrase?.value ?? "");
      return signStructured(message, domain, key);
    });
  });

  const provider = walletProvider(window);
  if (provider) {
    walletButton = document.createElement("button");
    walletButton.type = "button";
    walletButton.id = "verdict-wallet";
    walletButton.textContent = "Sign with wallet and submit";
    (submitButton ?? form.lastElementChild)?.after(walletButton);
    walletButton.addEventListener("click", () => {
      if (!submitting) run((message, domain) => walletSign(provider, message, domain));
    });
  }
}

// ---------------------------------------------------------------------------------------------
// access page: the chain state, pending until the block that confirms (or fails) it

function initRefresh() {
  const initial = byId("chain-state");
  if (!initial || !initial.hasAttribute("data-refresh")) return;
  const settled = (el) => el?.dataset.state === "confirmed" || el?.dataset.state === "failed";
  if (settled(initial)) return;
  let edited = false;
  document.addEventListener("input", () => (edited = true), true);
  const typing = () => edited || document.activeElement?.matches?.("input, textarea, select") === true;

  async function tick() {
    if (submitting) return;
    if (!typing()) {
      window.location.reload();
      return;
    }
    // someone is filling in the page: refresh the chain state in place, keep what they typed
    try {
      const response = await fetch(window.location.href, {
        credentials: "same-origin",
        cache: "no-store",
        headers: { Accept: "text/html" },
      });
      if (response.ok) {
        const fresh = new DOMParser().parseFromString(await response.text(), "text/html").getElementById("chain-state");
        const current = byId("chain-state");
        if (fresh && current) current.replaceWith(document.importNode(fresh, true));
        if (settled(fresh)) return;
      }
    } catch {
      // try again on the next tick
    }
    setTimeout(tick, REFRESH_MS);
  }
  setTimeout(tick, REFRESH_MS);
}

function init() {
  initSignIn();
  initVerdict();
  initRefresh();
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
else init();
