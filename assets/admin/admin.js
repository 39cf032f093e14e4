// The admin console's one script (served from the binary; the pages work without it).
// It asks before destructive buttons and copies links marked data-copy.
document.addEventListener("submit", (e) => {
  const b = e.submitter;
  if (b && b.dataset.confirm && !window.confirm(b.dataset.confirm)) e.preventDefault();
});
document.addEventListener("click", (e) => {
  const t = e.target;
  if (t instanceof HTMLElement && t.dataset.copy) {
    navigator.clipboard.writeText(t.dataset.copy).then(() => { t.textContent = "Copied"; });
  }
});
