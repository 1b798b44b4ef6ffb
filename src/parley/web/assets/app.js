// The chat page: conversations on the left, the open one on the right, replies streamed from
// `POST /api/chat`. Routes of newer servers (`/api/runs/…`) are used when they answer, and
// the page falls back to what older ones offer when they answer 404.
import { call, download, events, openStream, storeKey, storedKey } from "./api.js";
import { ReplyView, el, userMessage } from "./view.js";

const $ = (id) => document.getElementById(id);
const ui = {
  sidebar: $("sidebar"), list: $("conversations"), older: $("older"), newChat: $("new-chat"),
  toggleSidebar: $("toggle-sidebar"), model: $("model"), agent: $("agent"), theme: $("theme"),
  keyForm: $("key-form"), key: $("key"), keyNote: $("key-note"), forgetKey: $("forget-key"),
  notice: $("notice"), messages: $("messages"), composer: $("composer"), input: $("input"),
  send: $("send"), stop: $("stop"),
};
const state = { conversationId: null, run: null, cursor: null };
const THEMES = ["system", "light", "dark"];
const path = (id) => `/api/conversations/${encodeURIComponent(id)}`;

// --- errors and the key ------------------------------------------------------------------

function report(error) {
  if (error && error.name === "AbortError") return;
  if (error && error.status === 401) {
    ui.keyNote.textContent = error.message;
    ui.keyForm.hidden = false;
    ui.key.focus();
    return;
  }
  ui.notice.textContent = error && error.message ? error.message : String(error);
  ui.notice.hidden = false;
}

function clearNotice() {
  ui.notice.hidden = true;
  ui.notice.textContent = "";
}

ui.keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  storeKey(ui.key.value.trim());
  ui.key.value = "";
  ui.keyForm.hidden = true;
  clearNotice();
  start();
});
ui.forgetKey.addEventListener("click", () => {
  storeKey("");
  ui.key.value = "";
});

// --- theme and layout --------------------------------------------------------------------

function applyTheme(theme) {
  document.documentElement.dataset.theme = theme;
  ui.theme.textContent = `Theme: ${theme}`;
  localStorage.setItem("parley.theme", theme);
}
ui.theme.addEventListener("click", () => {
  const now = THEMES.indexOf(document.documentElement.dataset.theme);
  applyTheme(THEMES[(now + 1) % THEMES.length]);
});
function showSidebar(open) {
  document.body.classList.toggle("sidebar-open", open);
  ui.toggleSidebar.setAttribute("aria-expanded", String(open));
}
ui.toggleSidebar.addEventListener("click", () => showSidebar(!document.body.classList.contains("sidebar-open")));
$("close-sidebar").addEventListener("click", () => {
  showSidebar(false);
  ui.toggleSidebar.focus();
});

// --- the model and agent pickers ---------------------------------------------------------

function fillPicker(select, names, storageKey) {
  const first = select.options[0];
  select.replaceChildren(first, ...names.map(([value, label]) => el("option", { value, text: label })));
  const saved = localStorage.getItem(storageKey);
  if (saved && names.some(([value]) => value === saved)) select.value = saved;
  select.onchange = () => localStorage.setItem(storageKey, select.value);
}

async function loadPickers() {
  const models = await call("GET", "/v1/models");
  const names = models.data.filter((model) => !model.id.startsWith("agent:")).map((model) => [model.id, model.id]);
  fillPicker(ui.model, names, "parley.model");
  try {
    const agents = await call("GET", "/api/agents");
    fillPicker(ui.agent, agents.data.map((agent) => [agent.name, agent.description ? `${agent.name} — ${agent.description}` : agent.name]), "parley.agent");
  } catch (error) {
    if (error.status !== 404) throw error;
  }
}

// --- the conversation list ---------------------------------------------------------------

function conversationItem(conversation) {
  const title = conversation.title || "Untitled conversation";
  const open = el("button", { type: "button", class: "open", title }, el("span", { class: "title", text: title }),
    el("time", { datetime: conversation.updated_at, text: new Date(conversation.updated_at).toLocaleString() }));
  open.addEventListener("click", () => { location.hash = `conversation=${encodeURIComponent(conversation.id)}`; });
  const action = (label, handler) => {
    const button = el("button", { type: "button", text: label });
    button.addEventListener("click", () => { menu.open = false; handler().catch(report); });
    return button;
  };
  const menu = el("details", { class: "actions" }, el("summary", { "aria-label": `Actions for ${title}`, text: "⋯" }),
    el("div", { class: "menu" },
      action("Rename", async () => rename(item, open, conversation)),
      action("Export Markdown", () => download(`${path(conversation.id)}/export?format=markdown`)),
      action("Export JSON", () => download(`${path(conversation.id)}/export?format=json`)),
      action("Delete", () => remove(conversation, title))));
  const item = el("li", { "data-id": conversation.id }, open, menu);
  if (conversation.id === state.conversationId) item.classList.add("active");
  return item;
}

async function refreshList(more = false) {
  const query = more && state.cursor ? `&cursor=${encodeURIComponent(state.cursor)}` : "";
  const page = await call("GET", `/api/conversations?limit=50${query}`);
  const items = page.data.map(conversationItem);
  if (more) ui.list.append(...items);
  else ui.list.replaceChildren(...items);
  state.cursor = page.next_cursor;
  ui.older.hidden = !state.cursor;
}
ui.older.addEventListener("click", () => refreshList(true).catch(report));

function markActive() {
  for (const item of ui.list.children) item.classList.toggle("active", item.dataset.id === state.conversationId);
}

async function rename(item, open, conversation) {
  const field = el("input", { type: "text", maxlength: "200", "aria-label": "New title" });
  field.value = conversation.title || "";
  const form = el("form", { class: "rename" }, field, el("button", { type: "submit", text: "Save" }));
  open.replaceWith(form);
  field.focus();
  field.select();
  field.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      event.stopPropagation();
      form.replaceWith(open);
    }
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const title = field.value.trim();
    if (!title) return;
    call("PATCH", path(conversation.id), { title }).then(() => refreshList()).catch(report);
  });
}

async function remove(conversation, title) {
  if (!confirm(`Delete “${title}”? This can't be undone.`)) return;
  await call("DELETE", path(conversation.id));
  if (conversation.id === state.conversationId) location.hash = "";
  await refreshList();
}

// --- replies -----------------------------------------------------------------------------

function setRun(run) {
  state.run = run;
  ui.send.hidden = Boolean(run);
  ui.stop.hidden = !run;
}

function scrollDown() {
  ui.messages.scrollTop = ui.messages.scrollHeight;
}

function started(run, start) {
  run.runId = start.run_id;
  if (start.conversation_id && start.conversation_id !== state.conversationId) {
    state.conversationId = start.conversation_id;
    history.replaceState(null, "", `#conversation=${encodeURIComponent(start.conversation_id)}`);
  }
  refreshList().catch(report);
}

// Reads a reply's events into its view; true when the stream said how the reply ended.
async function consume(response, view, run) {
  for await (const { event, data } of events(response)) {
    if (event === "message_start") started(run, data);
    else if (event === "text_delta") view.addText(data.text);
    else if (event === "reasoning_delta") view.addReasoning(data.text);
    else if (event === "sources") view.showSources(data);
    else if (event === "tool_call_delta") view.toolCallDelta(data);
    else if (event === "tool_result") view.toolResult(data);
    else if (event === "step") view.stepStarted(data);
    else if (event === "agent_handoff") view.handoff(data);
    else if (event === "tool_call") view.toolCallDelta({ index: data.id, id: data.id, name: `${data.name} (left to the client)`, arguments: data.arguments });
    else if (event === "message_complete") {
      view.finished(data.finish_reason);
      return true;
    } else if (event === "error") {
      view.failed(data.message);
      return true;
    }
    scrollDown();
  }
  return false;
}

// Streams a reply into `view`; `open(signal)` opens the stream (and may throw before it starts).
async function runInto(view, open) {
  const run = { controller: new AbortController(), runId: null, stopped: false, detached: false };
  setRun(run);
  view.setStreaming(true);
  try {
    const response = await open(run.controller.signal);
    const ended = await consume(response, view, run);
    if (!ended && !run.stopped && !run.detached) view.failed("the connection closed before the reply ended");
  } catch (error) {
    if (!run.stopped && !run.detached) {
      if (!run.runId) throw error;
      view.failed(error.message);
    }
  } finally {
    view.setStreaming(false);
    if (run.stopped) view.setStatus("Stopped.", "cancelled");
    if (state.run === run) setRun(null);
    if (!run.detached) refreshList().catch(report);
  }
}

async function send() {
  const text = ui.input.value;
  if (!text.trim() || state.run) return;
  clearNotice();
  const asked = userMessage(text);
  const view = new ReplyView();
  ui.messages.append(asked, view.root);
  ui.input.value = "";
  scrollDown();
  const body = { message: text };
  if (state.conversationId) body.conversation_id = state.conversationId;
  if (ui.model.value) body.model = ui.model.value;
  if (ui.agent.value) body.agent = ui.agent.value;
  try {
    await runInto(view, (signal) => openStream("/api/chat", body, signal));
  } catch (error) {
    asked.remove();
    view.root.remove();
    if (!ui.input.value) ui.input.value = text;
    report(error);
  }
}

// Stop: the server cancels the run (newer servers), and the stream is closed (which cancels it on older ones).
async function stop() {
  const run = state.run;
  if (!run || run.stopped) return;
  run.stopped = true;
  if (run.runId) {
    try {
      await call("POST", `/api/runs/${encodeURIComponent(run.runId)}/cancel`);
    } catch (error) {
      if (error.status !== 404) report(error);
    }
  }
  run.controller.abort();
}

// Leaving a reply to go on without the page (another conversation is opened).
function detach() {
  if (!state.run) return;
  state.run.detached = true;
  state.run.controller.abort();
  setRun(null);
}

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  send();
});
ui.stop.addEventListener("click", stop);
ui.input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send();
  }
});
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && state.run) {
    event.preventDefault();
    stop();
  } else if (event.key === "Escape" && document.body.classList.contains("sidebar-open")) {
    showSidebar(false);
  }
});

// --- opening a conversation --------------------------------------------------------------

async function openConversation(id) {
  detach();
  const conversation = await call("GET", path(id));
  state.conversationId = id;
  markActive();
  ui.messages.replaceChildren();
  let last = null;
  for (const message of conversation.messages) {
    if (message.role === "user") ui.messages.append(userMessage(message.content));
    else if (message.role === "assistant") {
      last = new ReplyView();
      last.showStored(message);
      ui.messages.append(last.root);
    }
  }
  if (conversation.agent && [...ui.agent.options].some((option) => option.value === conversation.agent)) ui.agent.value = conversation.agent;
  scrollDown();
  if (conversation.active_run) await attach(conversation.active_run, last);
  else if (last && conversation.messages.at(-1).status === "streaming") await followSaved(id, last);
}

const SAVED_REPLY_POLL_MS = 1500;

// A reply another server (or a stream this page left) is still writing, on a server that can't
// attach to runs: the saved reply, read again until it is done or another conversation is open.
async function followSaved(id, view) {
  view.setStreaming(true);
  try {
    while (state.conversationId === id && !state.run) {
      await new Promise((resolve) => setTimeout(resolve, SAVED_REPLY_POLL_MS));
      if (state.conversationId !== id || state.run) return;
      const message = (await call("GET", path(id))).messages.at(-1);
      if (!message || message.role !== "assistant") return;
      view.showStored(message);
      if (message.status !== "streaming") return;
    }
  } finally {
    view.setStreaming(false);
  }
}

// A reply still running on the server: its events from the start, then live (newer servers).
async function attach(active, saved) {
  let view = saved;
  if (!view) {
    view = new ReplyView();
    ui.messages.append(view.root);
  }
  const url = `/api/runs/${encodeURIComponent(active.run_id)}/events?after=0`;
  try {
    await runInto(view, async (signal) => {
      const response = await openStream(url, undefined, signal);
      view.reset();
      return response;
    });
  } catch (error) {
    if (error.status !== 404) report(error);  // 404: an older server, or the run just ended: the saved reply stays
  }
}

function newChat() {
  detach();
  state.conversationId = null;
  ui.messages.replaceChildren();
  markActive();
  ui.input.focus();
}
ui.newChat.addEventListener("click", () => {
  if (location.hash) location.hash = "";
  else newChat();
  showSidebar(false);
});

function fromHash() {
  const match = /^#conversation=(.+)$/.exec(location.hash);
  const id = match ? decodeURIComponent(match[1]) : null;
  showSidebar(false);
  if (!id) return newChat();
  if (id === state.conversationId && state.run) return;
  openConversation(id).catch((error) => {
    if (error.status === 404) location.hash = "";
    report(error);
  });
}
window.addEventListener("hashchange", fromHash);

async function start() {
  try {
    await Promise.all([loadPickers(), refreshList()]);
    // The page opens the conversation in its address, unless a reply was sent while it loaded.
    if (!state.run && !state.conversationId) fromHash();
  } catch (error) {
    report(error);
  }
}

applyTheme(localStorage.getItem("parley.theme") || "system");
if (!storedKey()) ui.key.value = "";
start();
ui.input.focus();
