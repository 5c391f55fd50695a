"""The device's own web pages, served by :mod:`edge.net.web` as package data: plain
HTML, CSS and ES modules, no build step and nothing fetched from outside the device."""
