// A log page follows the end of its log, as `tail -f` does, until the reader scrolls up to read; scrolling back
// down to the end follows again. The refreshes replace the text inside the same <pre>, so a reader's place stays.
(function () {
  let following = true;

  function atEnd(pre) {
    return pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
  }

  function follow(pre) {
    if (pre && following) pre.scrollTop = pre.scrollHeight;
  }

  document.addEventListener(
    "scroll",
    function (event) {
      if (event.target instanceof HTMLElement && event.target.matches("pre.log")) following = atEnd(event.target);
    },
    true, // scroll events do not bubble
  );
  document.addEventListener("htmx:afterSwap", function (event) {
    if (event.target instanceof HTMLElement && event.target.matches("pre.log")) follow(event.target);
  });
  document.addEventListener("DOMContentLoaded", function () {
    follow(document.querySelector("pre.log"));
  });
})();
