// One message on the page. A reply's text is Markdown (sanitised in markdown.js); everything
// else the server sends (tool arguments and results, sources, errors) is set as plain text.
import { renderMarkdown } from "./markdown.js";

export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

const STATUS_TEXT = {
  cancelled: "Stopped.",
  failed: "Failed",
  streaming: "Still being written on the server: shown as last saved.",
};

export function userMessage(text) {
  return el("article", { class: "message user", "aria-label": "You" }, el("div", { class: "body", text }));
}

function folded(title, className) {
  const list = el("div", { class: "fold-body" });
  const fold = el("details", { class: `fold ${className}`, hidden: "" }, el("summary", { text: title }), list);
  return [fold, list];
}

export class ReplyView {
  constructor() {
    [this.sourcesFold, this.sourcesList] = folded("Sources", "sources");
    [this.stepsFold, this.stepsList] = folded("Tool steps", "steps");
    [this.reasoningFold, this.reasoningText] = folded("Reasoning", "reasoning");
    this.body = el("div", { class: "body markdown" });
    this.status = el("p", { class: "status", role: "status" });
    this.root = el(
      "article",
      { class: "message assistant", "aria-label": "Reply" },
      this.sourcesFold,
      this.stepsFold,
      this.reasoningFold,
      this.body,
      this.status,
    );
    this.reset();
    this.setStreaming(false);
  }

  reset() {
    this.text = "";
    this.reasoning = "";
    this.calls = new Map();
    this.step = 1;
    this.pending = false;
    for (const fold of [this.sourcesFold, this.stepsFold, this.reasoningFold]) fold.hidden = true;
    for (const list of [this.sourcesList, this.stepsList, this.reasoningText]) list.replaceChildren();
    this.body.replaceChildren();
    this.setStatus("");
  }

  setStreaming(on) {
    this.root.classList.toggle("streaming", on);
    this.root.setAttribute("aria-busy", on ? "true" : "false");
  }

  setStatus(text, kind = "") {
    this.status.textContent = text;
    this.status.className = `status ${kind}`;
    this.status.hidden = !text;
  }

  addText(text) {
    this.text += text;
    this.schedule();
  }

  addReasoning(text) {
    this.reasoning += text;
    this.reasoningFold.hidden = false;
    this.reasoningText.textContent = this.reasoning;
  }

  // Re-rendering the whole reply once per frame, not once per token.
  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      const list = this.root.parentElement;
      // Follow the reply down, unless the reader has scrolled up to read something else.
      const following = list && list.scrollHeight - list.scrollTop - list.clientHeight < 80;
      this.body.replaceChildren(renderMarkdown(this.text));
      if (following) list.scrollTop = list.scrollHeight;
    });
  }

  showSources({ passages = [], pending = [] }) {
    this.sourcesFold.hidden = !(passages.length || pending.length);
    const items = passages.map((passage) => {
      const where = passage.page ? `, page ${passage.page}` : "";
      const item = el("li", {}, el("strong", { text: `[${passage.index}] ${passage.title}${where}` }));
      if (passage.uri && /^https?:\/\//i.test(passage.uri)) {
        item.append(" ", el("a", { href: passage.uri, target: "_blank", rel: "noopener noreferrer", text: passage.uri }));
      }
      item.append(el("blockquote", { text: passage.text }));
      return item;
    });
    for (const doc of pending) items.push(el("li", { class: "pending", text: `${doc.title}: ${doc.state}, not searched yet` }));
    this.sourcesList.replaceChildren(el("ol", {}, ...items));
  }

  toolCallDelta({ index, id, name, arguments: args }) {
    const key = `${this.step}:${index}`;
    let call = this.calls.get(key);
    if (!call) {
      call = { args: el("code", { class: "arguments" }), name: el("strong", { text: name || "tool" }), result: el("pre", { class: "result", hidden: "" }) };
      call.id = id;
      this.calls.set(key, call);
      this.addStep(el("li", { class: "tool-call" }, call.name, " ", call.args, call.result));
    }
    if (name) call.name.textContent = name;
    call.args.textContent += args || "";
  }

  toolResult({ id, name, output, output_chars: chars, error }) {
    const call = [...this.calls.values()].find((entry) => entry.id === id);
    const text = error ? `Error: ${error}` : output + (chars > output.length ? ` … (${chars} characters)` : "");
    if (call) {
      call.result.hidden = false;
      call.result.textContent = text;
    } else {
      this.addStep(el("li", { class: "tool-result" }, el("strong", { text: name }), el("pre", { class: "result", text })));
    }
  }

  stepStarted({ step }) {
    this.step = step;
    this.addStep(el("li", { class: "step", text: `Step ${step}` }));
  }

  handoff({ from_agent: from, to_agent: to }) {
    this.addStep(el("li", { class: "handoff", text: `Handed over from ${from} to ${to}` }));
  }

  addStep(item) {
    this.stepsFold.hidden = false;
    if (!this.stepsList.firstChild) this.stepsList.append(el("ol"));
    this.stepsList.firstChild.append(item);
  }

  finished(reason) {
    if (reason && reason !== "stop") this.setStatus(`Finish reason: ${reason}`, "finish");
  }

  failed(message) {
    this.setStatus(`Error: ${message}`, "error");
  }

  // A reply as the conversation store keeps it.
  showStored(message) {
    this.reset();
    if (message.reasoning) this.addReasoning(message.reasoning);
    if (message.sources) this.showSources(Array.isArray(message.sources) ? { passages: message.sources } : message.sources);
    for (const step of message.steps || []) {
      if (step.role === "assistant") {
        (step.tool_calls || []).forEach((call, index) => {
          const fn = call.function || call;
          this.toolCallDelta({ index, id: call.id, name: fn.name, arguments: fn.arguments });
        });
        this.step += 1;
      } else if (step.role === "tool") {
        this.toolResult({ id: step.tool_call_id, name: step.name || "tool", output: String(step.content ?? ""), output_chars: 0 });
      }
    }
    this.text = message.content || "";
    this.body.replaceChildren(renderMarkdown(this.text));
    if (message.status === "failed") this.failed(message.error || "the reply failed");
    else if (message.status in STATUS_TEXT) this.setStatus(STATUS_TEXT[message.status], message.status);
    else this.finished(message.finish_reason);
  }
}
