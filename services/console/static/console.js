// The console's one script: a confirmation dialog before a rollout action (the server also requires the
// confirmation box and an operator name, so the page works, safely, without JavaScript).
document.querySelectorAll("form[data-confirm]").forEach(function (form) {
  form.addEventListener("submit", function (event) {
    var who = form.querySelector("[name=operator]").value || "(nobody)";
    if (!window.confirm(form.dataset.confirm + "\nOperator: " + who)) {
      event.preventDefault();
    }
  });
});
