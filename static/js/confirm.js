// A form with data-confirm asks first: "OK" submits it, "Cancel" leaves everything as it was.
document.addEventListener("submit", (event) => {
  const message = event.target.dataset.confirm;
  if (message && !window.confirm(message)) {
    event.preventDefault();
  }
});
