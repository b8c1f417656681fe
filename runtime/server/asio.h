// <boost/asio.hpp> as this project includes it. Debian 12's Boost 1.74 asio/awaitable.hpp uses
// std::exchange without including <utility>, so a file that includes Asio before anything else
// pulls in <utility> fails to compile; include this header instead of <boost/asio.hpp>.
#pragma once

// clang-format off
#include <utility>
#include <boost/asio.hpp>
// clang-format on
