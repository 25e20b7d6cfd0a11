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
