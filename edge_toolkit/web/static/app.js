// Drag and drop onto the upload form, the heatmap opacity sliders, the probability meters.
// The pages work without this script; it only adds convenience.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var drop = document.getElementById("drop");
  var files = document.getElementById("files");
  var photo = document.getElementById("photo");
  var chosen = document.getElementById("chosen");
  function show() {
    var names = [];
    [files, photo].forEach(function (input) {
      if (!input) return;
      for (var i = 0; i < input.files.length; i++) names.push(input.files[i].name);
    });
    if (chosen) {
      chosen.textContent = names.length ? names.length + " chosen: " + names.join(", ")
                                        : "No picture chosen.";
    }
  }
  if (files) files.addEventListener("change", show);
  if (photo) photo.addEventListener("change", show);
  if (drop && files) {
    ["dragenter", "dragover"].forEach(function (ev) {
      drop.addEventListener(ev, function (e) { e.preventDefault(); drop.classList.add("over"); });
    });
    ["dragleave", "drop"].forEach(function (ev) {
      drop.addEventListener(ev, function (e) { e.preventDefault(); drop.classList.remove("over"); });
    });
    drop.addEventListener("drop", function (e) {
      if (e.dataTransfer && e.dataTransfer.files.length) {
        files.files = e.dataTransfer.files;
        show();
      }
    });
  }
  document.querySelectorAll("input[data-heat]").forEach(function (slider) {
    var layer = document.getElementById(slider.getAttribute("data-heat"));
    function apply() { if (layer) layer.style.opacity = String(slider.value / 100); }
    slider.addEventListener("input", apply);
    apply();
  });
  document.querySelectorAll(".meter [data-p]").forEach(function (el) {
    var p = Math.max(0, Math.min(1, parseFloat(el.getAttribute("data-p"))));
    if (el.classList.contains("fill")) el.style.width = (100 * p) + "%";
    else el.style.left = (100 * p) + "%";
  });
});
