init();  /* its own file: the Content-Security-Policy runs no inline script */
