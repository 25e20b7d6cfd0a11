// Small enhancements; every page works without them.
document.addEventListener("click", (event) => {
  const copy = event.target.closest("[data-copy]");
  if (copy) {
    const source = document.getElementById(copy.dataset.copy);
    navigator.clipboard?.writeText(source.textContent.trim()).then(() => {
      copy.textContent = "Copied";
      setTimeout(() => { copy.textContent = "Copy"; }, 1500);
    });
  }
  const all = event.target.closest("[data-select-all]");
  if (all) {
    document.querySelectorAll(`input[name="${all.dataset.selectAll}"]`).forEach((box) => {
      box.checked = all.checked;
    });
  }
});
document.addEventListener("submit", (event) => {
  const message = event.target.dataset.confirm;
  if (message && !window.confirm(message)) event.preventDefault();
});

// A table or chart wider than its card scrolls inside it; a keyboard reaches it only if it can
// take the focus, and a screen reader names it after its section's heading. Only boxes that
// really overflow become tab stops, so narrow tables add none. Charts carry their own.
function labelScrollers() {
  // A key or code snippet (.secret) keeps its own content as its name: focusable only.
  document.querySelectorAll(".table-wrap, .secret").forEach((box) => {
    const scrolls = box.scrollWidth > box.clientWidth + 1;
    if (scrolls && !box.hasAttribute("tabindex")) {
      box.setAttribute("tabindex", "0");
      box.dataset.scroller = "";
      if (box.classList.contains("table-wrap") && !box.hasAttribute("aria-label")) {
        const heading = box.closest("section, .card")?.querySelector("h2, h3");
        box.setAttribute("role", "region");
        box.setAttribute("aria-label", `${heading ? heading.textContent.trim() : "Table"} (scrolls sideways)`);
      }
    } else if (!scrolls && "scroller" in box.dataset) {
      box.removeAttribute("tabindex");
      box.removeAttribute("role");
      box.removeAttribute("aria-label");
      delete box.dataset.scroller;
    }
  });
}
document.addEventListener("DOMContentLoaded", labelScrollers);
window.addEventListener("resize", labelScrollers);
document.addEventListener("toggle", labelScrollers, true);  // a <details> opened
