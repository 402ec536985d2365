"""Turn exceptions into messages in the page (gr.Error), never a stack trace, and log what is unexpected."""

from __future__ import annotations

import functools
import html
import inspect
import logging

import gradio as gr

from negclip.errors import USER_ERRORS
from negclip.tuning import AdapterError

logger = logging.getLogger(__name__)

PAGE_ERRORS = USER_ERRORS + (AdapterError,)


def page_message(error: BaseException) -> str:
    """Escape an error message for the page, where Gradio renders it as HTML ("<folder>" would vanish)."""
    return html.escape(str(error) or type(error).__name__, quote=False)


def warn(message: str) -> None:
    """Show a warning in the page (a Python warning when called outside a Gradio event)."""
    gr.Warning(html.escape(message, quote=False))


def _as_page_error(function_name: str, error: Exception) -> gr.Error:
    if isinstance(error, PAGE_ERRORS):
        logger.info("%s rejected the input: %s", function_name, error)
        return gr.Error(page_message(error), print_exception=False)
    logger.exception("%s failed", function_name)
    return gr.Error(
        f"internal error in {function_name} ({type(error).__name__}: {page_message(error)}); the server log "
        "has the details",
        print_exception=False,
    )


def page_errors(function):
    """Decorate a handler so that errors reach the page as gr.Error messages; works for generators too."""
    if inspect.isgeneratorfunction(function):

        @functools.wraps(function)
        def generator_wrapper(*args, **kwargs):
            try:
                yield from function(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as error:
                raise _as_page_error(function.__name__, error) from error

        return generator_wrapper

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as error:
            raise _as_page_error(function.__name__, error) from error

    return wrapper
